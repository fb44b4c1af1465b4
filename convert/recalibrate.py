"""Refit a converted file's temperature and answer threshold on what that file computes on validation.

Conversion changes the logits (an int8 file is a little less or more confident than its float32 file),
so each file carries a calibration fitted on its own outputs for the run's validation
split (splits.csv), with training's rule (evaluation.calibration.fit_calibration); TEST is never read.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.core.crops import file_cell_crop
from edge_app.core.dataset import split_rows
from edge_app.core.model import Classifier
from evaluation.calibration import TARGET_ANSWERED_ACCURACY, TARGET_LEVEL, fit_calibration


class RecalibrationError(ValueError):
    """The run's validation split cannot be read; the message says what to fix."""


def validation_images(run_dir: Path) -> list[tuple[Path, str, str]]:
    """(image, label, group) of the run's validation rows; [] when the run has no splits.csv."""
    splits = Path(run_dir) / "splits.csv"
    if not splits.is_file():
        return []
    try:
        rows = split_rows(splits, "val")
    except ValueError as exc:
        raise RecalibrationError(f"{exc}, or pass --keep-calibration") from exc
    return [(Path(row["filepath"]), row["label"], row.get("group") or row["filepath"]) for row in rows]


def refit(model_path: Path, images: list[tuple[Path, str, str]], threads: int | None = None) -> dict[str, Any]:
    """Temperature and threshold of one .tflite file, fitted on its outputs for labelled validation images."""
    classifier = Classifier(model_path, threads=threads)
    logits, labels, groups = [], [], []
    for n, (path, label, group) in enumerate(images, 1):
        crop, _ = file_cell_crop(path, classifier.crop_settings)
        if crop is not None:  # training skipped these rows too
            logits.append(classifier.logits(classifier.raw_outputs(crop)))
            labels.append(classifier.labels.index(label))
            groups.append(group)
        if n % 500 == 0 or n == len(images):
            print(f"\rcalibrating on validation: {n}/{len(images)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if not logits:
        raise RecalibrationError("no validation image has a located cell")
    temperature, threshold = fit_calibration(np.stack(logits), np.array(labels), np.array(groups))
    return {"temperature": round(temperature, 4), "min_confidence": round(threshold, 4), "cells": len(logits),
            "target_answered_accuracy": TARGET_ANSWERED_ACCURACY, "target_level": TARGET_LEVEL,
            "fitted_on": "this file's outputs on the run's validation split"}
