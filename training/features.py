"""Backbone features of cached crops under the four 90-degree rotations, computed once.

They train the head quickly on CPU (the frozen backbone would otherwise run every epoch)
and, averaged over rotations, identify augmented copies of the same cell.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np


def features_cache_file(crops_file: Path, weights: str | None, rows: int) -> Path:
    """Cache file for the backbone features of one crop cache's rows under one backbone's weights.

    Keyed by the crop cache (itself keyed by the image files) and by the weights file's size and
    time, not by the row count alone: another dataset of the same size never reuses stale features.
    """
    tag = Path(str(weights)).name
    if weights and Path(str(weights)).is_file():
        stat = Path(str(weights)).stat()
        tag += "_" + hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    key = Path(crops_file).stem.removeprefix("crops_")
    return Path(crops_file).parent / f"features_{key}_{tag}_{rows}.npy"


def feature_extractor(model):
    """A model mapping RGB [0,255] crops to pooled backbone features, sharing `model`'s layers."""
    import keras
    pooled = model.get_layer("pool").output
    return keras.Model(model.inputs, pooled)


def rotated_features(extractor, crops: np.ndarray, rotations: int = 4, batch_size: int = 64,
                     label: str = "features") -> np.ndarray:
    """Array (rotations, N, D) of pooled features of each crop rotated by k*90 degrees."""
    out = []
    total = rotations * len(crops)
    done = 0
    for k in range(rotations):
        parts = []
        for start in range(0, len(crops), batch_size):
            batch = np.rot90(crops[start:start + batch_size], k, axes=(1, 2)).astype(np.float32)
            parts.append(np.asarray(extractor(batch, training=False)))
            done += len(batch)
            print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)
        out.append(np.concatenate(parts))
    print(file=sys.stderr)
    return np.stack(out)
