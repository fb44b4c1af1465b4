"""argparse types shared by the subcommands: a bad value is a one-line usage error."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


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


def port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number between 1 and 65535")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _creatable(path: Path) -> None:
    """Raise ArgumentTypeError unless the path's nearest existing ancestor is a folder this user can write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to write in {parent}")


def output_file(text: str) -> Path:
    """A file to write: not a folder, and in a folder that exists or can be made (checked before any work)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    if not path.exists():
        _creatable(path)
    elif not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to write it")
    return path


def output_folder(text: str) -> Path:
    """A folder to write files in: an existing folder, or one that can be made."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    if not path.exists():
        _creatable(path)
    return path
