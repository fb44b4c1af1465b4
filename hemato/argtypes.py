"""argparse types shared by the subcommands: a bad value is a one-line usage error."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def rbc_diameter(text: str) -> float:
    value = float(text)
    if not 3.0 <= value <= 2000.0:
        raise argparse.ArgumentTypeError("must be a red-cell diameter in pixels, between 3 and 2000")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value
