"""How far one test figure can be trusted: its accuracy with a bootstrap over the cells behind the images.

The dataset's test images are rotated, mirrored and shifted copies of a few dozen cells (TEST: 2,487
images of 71 cells), so its accuracy moves by whole cells, not by images. `hemato verify --cells`
recovers the cells with training's own photograph matcher and resamples them, within each class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_app.core.vision import CropSettings
from evaluation.photographs import localisation_only, recover_photographs

RESAMPLES = 10_000


def recover_cells(images: list[tuple[Path, str]], settings: CropSettings) -> np.ndarray:
    """A cell id per image: copies of one photograph share it (evaluation.photographs)."""
    labels = np.array([label for _, label in images])
    return recover_photographs([str(path) for path, _ in images], labels, localisation_only(settings))


def cell_bootstrap(correct: np.ndarray, labels: np.ndarray, cells: np.ndarray, level: float = 0.95,
                   resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float | int]:
    """Image accuracy's central `level` interval when each class's cells are drawn again with replacement.

    Each resample keeps the number of cells per class and weighs every cell by its number of images,
    as the accuracy itself does.
    """
    correct, labels, cells = np.asarray(correct, bool), np.asarray(labels), np.asarray(cells)
    rng = np.random.default_rng(seed)
    right = np.zeros(resamples)
    total = np.zeros(resamples)
    count = 0
    for label in np.unique(labels):
        in_class = labels == label
        ids, inverse = np.unique(cells[in_class], return_inverse=True)
        per_cell_right = np.bincount(inverse, weights=correct[in_class], minlength=len(ids))
        per_cell_total = np.bincount(inverse, minlength=len(ids)).astype(float)
        picks = rng.integers(0, len(ids), (resamples, len(ids)))
        right += per_cell_right[picks].sum(axis=1)
        total += per_cell_total[picks].sum(axis=1)
        count += len(ids)
    low, high = np.quantile(right / total, [(1 - level) / 2, (1 + level) / 2])
    return {"cells": count, "level": level, "low": float(low), "high": float(high)}
