"""Compute each image's cell crop once with edge_app's localiser and cache it on disk."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edge_app.core.crops import file_cell_crop
from edge_app.core.vision import CropSettings


def cache_key(paths: list[str], settings: CropSettings) -> str:
    """A short hash of these exact files (paths and modification times) and settings, naming cache files."""
    digest = hashlib.sha256(json.dumps([paths, settings.to_dict()]).encode())
    for p in paths:
        digest.update(str(Path(p).stat().st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def crop_cache_file(paths: list[str], settings: CropSettings, cache_dir: Path) -> Path:
    """Where the crops of these exact files (paths and modification times) under these settings are cached."""
    return Path(cache_dir) / f"crops_{settings.input_size}_{cache_key(paths, settings)}.npz"


def cached_crops(paths: list[str], settings: CropSettings, cache_dir: Path,
                 progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Crops for all paths (uint8 N x S x S x 3) and a reason per path ("" when usable)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = crop_cache_file(paths, settings, cache_dir)
    if cache_file.exists():
        data = np.load(cache_file, allow_pickle=False)
        return data["crops"], [str(r) for r in data["reasons"]]
    size = settings.input_size
    crops = np.zeros((len(paths), size, size, 3), np.uint8)
    reasons = []
    for i, path in enumerate(paths):
        crop, reason = file_cell_crop(path, settings)
        if crop is not None:
            crops[i] = crop
        reasons.append(reason)
        if progress and ((i + 1) % 500 == 0 or i + 1 == len(paths)):
            print(f"\rcropping cells: {i + 1}/{len(paths)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, crops=crops, reasons=np.array(reasons))
    tmp.replace(cache_file)
    return crops, reasons
