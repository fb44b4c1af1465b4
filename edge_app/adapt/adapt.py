"""Adapt a model file to a laboratory's cells: the backbone's features through the file itself (HeadProbe), a
new head fitted with numpy (edge_app.adapt.fit), written into a copy of the file with metadata saying so."""
from __future__ import annotations

import datetime
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_app.adapt.cells import CellSet, augmented_crops
from edge_app.adapt.fit import AdaptedHead, adapt_head, fit_logit_range
from edge_app.core.head_probe import HeadProbe
from edge_app.core.model import stored_calibration
from edge_app.core.ood import ColourGuard, GuardRegion
from edge_app.core.vision import CropSettings, crop_statistics
from edge_app.core.tflite_file import read_dense_head, with_dense_head, with_metadata

DEFAULT_COPIES = 2  # augmented copies per cell besides the cell itself
GUARD_PRIOR_CELLS = 10  # the base colour guard's covariance counts as this many cells


def lab_colour_guard(base: dict[str, Any] | None, crops: list[np.ndarray], settings: CropSettings) -> dict | None:
    """The colour guard with a region for the laboratory's cells added (one region per laboratory, as training
    does): another laboratory's stain is usual here by construction, and the base regions would flag every cell.
    Its mean is the given cells'; their covariance shrunk towards the nearest base region's (GUARD_PRIOR_CELLS);
    its limit that region's, at least the given cells' largest distance."""
    guard = ColourGuard.from_dict(base)
    if guard is None:
        return None
    stats = np.array([crop_statistics(crop, settings) for crop in crops])
    n, mean = len(stats), stats.mean(axis=0)
    nearest = min(guard.regions, key=lambda region: float(region.distance(mean)[0] / region.max_distance))
    cov = ((n - 1) * np.cov(stats, rowvar=False) + GUARD_PRIOR_CELLS * np.linalg.inv(nearest.inv_cov)) \
        / (n - 1 + GUARD_PRIOR_CELLS)
    region = GuardRegion(mean, np.linalg.inv(cov), 0.0)
    limit = max(nearest.max_distance, float(region.distance(stats).max()))
    lab = GuardRegion(mean, region.inv_cov, limit, f"adapted: {n} laboratory cells")
    return {**ColourGuard(guard.regions + (lab,)).to_dict(), "adapted_region": lab.source}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cell_features(probe: HeadProbe, crops: list[np.ndarray], copies: int = DEFAULT_COPIES,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, cell index, is original) with one row per crop and augmented copy: the views' mean of the
    dense layer's input, which is what the deployed graph's averaged logits are linear in."""
    rows, cell, original = [], [], []
    for i, crop in enumerate(crops):
        for k, variant in enumerate(augmented_crops(crop, copies)):
            rows.append(probe.features(variant).mean(axis=0))
            cell.append(i)
            original.append(k == 0)
        if progress is not None:
            progress(i + 1)
    return np.array(rows), np.array(cell), np.array(original)


def adapted_metadata(base_meta: dict[str, Any], base_path: Path, base_data: bytes, head: AdaptedHead,
                     cells: CellSet, labels: list[str], copies: int) -> dict[str, Any]:
    """The base file's metadata with the new calibration and an 'adaptation' record."""
    record = {"base_file": base_path.name, "base_sha256": sha256_of(base_data),
              "date": datetime.date.today().isoformat(), "cells_per_class": cells.counts(labels),
              "skipped_images": len(cells.skipped), "augmented_copies": copies,
              "cv_accuracy": round(head.cv_accuracy, 4), "base_accuracy_on_these_cells": round(head.base_accuracy, 4),
              "cv_answered": round(head.cv_answered, 4), "cv_folds": head.folds,
              "kept_from_base": cells.missing(labels),
              "cells_called_kept_class": head.called_kept,
              "calibration_kept_from_base": head.calibration_kept,
              "regularisation": float(f"{head.strength:.4g}"),
              "base_calibration": {"temperature": base_meta.get("temperature"),
                                   "min_confidence": base_meta.get("min_confidence")}}
    meta = {**base_meta, "temperature": round(head.temperature, 4), "min_confidence": round(head.min_confidence, 4),
            "adaptation": record}
    settings = CropSettings.from_metadata(base_meta)
    guard = lab_colour_guard(base_meta.get("ood"), cells.crops, settings)
    if guard is not None:
        meta["ood"] = guard
        record["colour_guard"] = (f"a region for the given cells added ({len(cells.crops)} cells; covariance shrunk "
                                  f"towards the nearest base region's as {GUARD_PRIOR_CELLS} cells)")
    meta.pop("format", None)
    return meta


def adapt_file(base_path: Path, cells: CellSet, labels: list[str], base_meta: dict[str, Any],
               copies: int = DEFAULT_COPIES, seed: int = 0, threads: int | None = None,
               quiet: bool = False) -> tuple[bytes, dict[str, Any]]:
    """(the adapted .tflite bytes, its metadata): the cells' features through the file, then adapted_model."""
    base_data = Path(base_path).read_bytes()
    probe = HeadProbe(base_data, threads=threads)

    def progress(done: int) -> None:
        if not quiet:
            print(f"\rhemato adapt: features of {done}/{len(cells.crops)} cells", end="", file=sys.stderr, flush=True)
    features = cell_features(probe, cells.crops, copies, progress)
    if not quiet:
        print(file=sys.stderr)
    return adapted_model(Path(base_path), base_data, probe, features, cells, labels, base_meta, copies, seed)


def adapted_model(base_path: Path, base_data: bytes, probe: HeadProbe,
                  features: tuple[np.ndarray, np.ndarray, np.ndarray], cells: CellSet, labels: list[str],
                  base_meta: dict[str, Any], copies: int, seed: int) -> tuple[bytes, dict[str, Any]]:
    """(the adapted .tflite bytes, its metadata) from the cells' features (cell_features through `probe`, the
    base file's HeadProbe): a new head fitted to them, written into a copy of base_data."""
    x, cell, original = features
    y = np.array([labels.index(cells.labels[c]) for c in cell])
    w0, b0 = read_dense_head(base_data)
    head = adapt_head(x, y, cell, original, w0, b0, seed, stored_calibration(base_meta))
    head = fit_logit_range(head, x, probe.logit_range())
    meta = adapted_metadata(base_meta, base_path, base_data, head, cells, labels, copies)
    return with_metadata(with_dense_head(base_data, head.weights, head.bias), meta), meta
