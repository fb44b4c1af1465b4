"""The int8 representative dataset: real images cut by edge_app's crop, exactly as at inference."""
from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.core.crops import NO_CELL, file_cell_crop
from edge_app.core.dataset import images_in, labelled_images
from edge_app.core.vision import CropSettings


class CalibrationError(ValueError):
    """The calibration folder cannot give any usable image; the message names the folder."""


@dataclass
class CalibrationSet:
    """Model-ready RGB uint8 crops (S x S x 3) and where they came from."""

    folders: list[Path]
    crops: list[np.ndarray]
    per_class: dict[str, int] = field(default_factory=dict)
    no_cell: int = 0
    unreadable: int = 0

    def info(self) -> dict:
        """What goes into the model metadata under "calibration"."""
        return {"folders": [str(f) for f in self.folders], "count": len(self.crops), "per_class": self.per_class,
                "skipped_no_cell": self.no_cell, "skipped_unreadable": self.unreadable}

    def batches(self):
        """The converter's representative_dataset: float32 RGB [0,255] batches of one."""
        for crop in self.crops:
            yield [crop[None].astype(np.float32)]


def list_images(folder: Path) -> list[tuple[Path, str]]:
    """(path, class) for FOLDER/<CLASS>/*image*, else (path, "") for the images in FOLDER itself."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder not found: {folder}")
    has_classes = any(d.is_dir() and images_in(d) for d in folder.iterdir())
    pairs = labelled_images(folder) if has_classes else [(p, "") for p in images_in(folder)]
    if not pairs:
        raise CalibrationError(f"no images in calibration folder {folder} "
                               "(expected *.jpg/*.png in it or in class folders under it)")
    return pairs


def stratified_order(pairs: list[tuple[Path, str]], seed: int) -> list[tuple[Path, str]]:
    """All pairs, shuffled within each class with a fixed seed, then interleaved class by class."""
    rng = random.Random(seed)
    by_class: dict[str, list[tuple[Path, str]]] = {}
    for pair in pairs:
        by_class.setdefault(pair[1], []).append(pair)
    queues = [rng.sample(items, len(items)) for _, items in sorted(by_class.items())]
    order = []
    for rank in range(max(len(q) for q in queues)):
        order.extend(q[rank] for q in queues if rank < len(q))
    return order


def build_calibration_set(folders: Path | list[Path], settings: CropSettings, count: int = 300, seed: int = 0,
                          progress: Callable[[str], None] | None = None) -> CalibrationSet:
    """Up to `count` crops, stratified by laboratory (folder) and class, skipping images where no cell is found."""
    if count < 1:
        raise CalibrationError(f"--calib-count must be at least 1, got {count}")
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    several = len(folders) > 1
    pairs = [(path, f"{folder.name}/{label}" if several else label) for folder in folders
             for path, label in list_images(folder)]
    folder = ", ".join(str(f) for f in folders)
    result = CalibrationSet(folders, [])
    for path, label in stratified_order(pairs, seed):
        if len(result.crops) >= count:
            break
        crop, reason = file_cell_crop(path, settings)
        if crop is None:
            if reason == NO_CELL:
                result.no_cell += 1
            else:
                result.unreadable += 1
            continue
        result.crops.append(crop)
        result.per_class[label or "(unlabelled)"] = result.per_class.get(label or "(unlabelled)", 0) + 1
        if len(result.crops) % 50 == 0:
            progress(f"calibration: {len(result.crops)}/{count} crops")
    if not result.crops:
        raise CalibrationError(f"no usable calibration image in {folder}: no cell was found in "
                               f"{result.no_cell} image(s), {result.unreadable} could not be read")
    progress(f"calibration: {len(result.crops)} crops from {folder} "
             f"({result.no_cell} without a cell skipped)")
    return result
