"""What the model sees: locate stained white blood cells in a frame and cut the model input.

This module is the single definition of preprocessing. Training, conversion, verification,
benchmarks and the web viewer import it; nobody re-implements it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class CropSettings:
    """How cells are found and cropped; stored inside every model so the device crops alike."""

    input_size: int = 224
    # A pixel is "stained" when blue minus green exceeds this (WBC nuclei are purple-blue,
    # red cells pink, background pale: all three have blue close to green except nuclei).
    stain_threshold: int = 40
    # Stained blobs closer than this fraction of the frame's short side are one cell
    # (a neutrophil's lobes are separate blobs).
    merge_frac: float = 0.04
    # Minimum stained area of a cell as a fraction of the frame area (platelets are smaller).
    min_area_frac: float = 0.011
    # A cell needs one stained blob at least this large (a nucleus lobe); platelet clumps
    # are many small blobs.
    min_lobe_frac: float = 0.0025
    # The crop is a square of side crop_scale * the nucleus's larger extent ...
    crop_scale: float = 1.0
    # ... but never smaller than this fraction of the frame's short side. Tight crops show less of the
    # surrounding smear to memorise (chosen on validation, see docs/experiments/).
    min_crop_frac: float = 0.2
    # Frames are analysed at most this large on the long side: larger ones are downscaled, so the
    # morphology sees the same picture at any camera resolution (and huge images stay cheap).
    analysis_max_side: int = 320

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Box:
    """A square crop box in source-image pixels (x1, y1 exclusive; may extend past the frame)."""

    x0: int
    y0: int
    x1: int
    y1: int
    stained_area: int  # stained pixels in the cell, in source-image pixels

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def stain_mask(bgr: np.ndarray, settings: CropSettings) -> np.ndarray:
    """Binary mask of purple-stained pixels (nuclei, platelets) in a BGR frame."""
    b = bgr[:, :, 0].astype(np.int16)
    g = bgr[:, :, 1].astype(np.int16)
    return ((b - g) > settings.stain_threshold).astype(np.uint8)


def _largest_blob_area(cell: np.ndarray) -> int:
    """Pixels in the largest 8-connected blob of one cell's stained mask (its biggest nucleus lobe).

    Labelled within the cell's own box, not the whole frame: a blob never spans two merged cells,
    so the areas are the same and the labelling costs a fraction of a frame-wide pass.
    """
    _, _, stats, _ = cv2.connectedComponentsWithStats(cell.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max())


def locate_cells(bgr: np.ndarray, settings: CropSettings) -> list[Box]:
    """Return one square crop box per stained white blood cell, largest first."""
    height, width = bgr.shape[:2]
    scale = min(1.0, settings.analysis_max_side / max(height, width))
    small = bgr if scale == 1.0 else cv2.resize(bgr, (round(width * scale), round(height * scale)),
                                               interpolation=cv2.INTER_AREA)
    mask = stain_mask(small, settings)
    sh, sw = mask.shape
    short = min(sh, sw)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    radius = max(1, round(settings.merge_frac * short))
    merged = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    boxes = []
    min_area = settings.min_area_frac * sh * sw
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        cell = (labels[y:y + h, x:x + w] == label) & (mask[y:y + h, x:x + w] > 0)
        stained = int(cell.sum())
        if stained < min_area:
            continue
        if _largest_blob_area(cell) < settings.min_lobe_frac * sh * sw:
            continue
        ys, xs = np.nonzero(cell)
        x, y = x + xs.min(), y + ys.min()
        w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
        side = max(settings.crop_scale * max(w, h), settings.min_crop_frac * short)
        cx, cy = x + w / 2, y + h / 2
        box = [(cx - side / 2) / scale, (cy - side / 2) / scale, (cx + side / 2) / scale, (cy + side / 2) / scale]
        x0, y0, x1, y1 = (round(v) for v in box)
        boxes.append(Box(x0, y0, x1, y1, round(stained / scale / scale)))
    boxes.sort(key=lambda b: b.stained_area, reverse=True)
    return boxes


def crop_for_model(bgr: np.ndarray, box: Box, input_size: int) -> np.ndarray:
    """Cut the box out of a BGR frame (black outside the frame) and return RGB uint8 input_size^2."""
    height, width = bgr.shape[:2]
    pad = max(0, -box.x0, -box.y0, box.x1 - width, box.y1 - height)
    src = bgr
    if pad:
        src = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = src[box.y0 + pad:box.y1 + pad, box.x0 + pad:box.x1 + pad]
    interp = cv2.INTER_AREA if crop.shape[0] > input_size else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (input_size, input_size), interpolation=interp)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def largest_cell_crop(bgr: np.ndarray, settings: CropSettings) -> tuple[np.ndarray | None, Box | None]:
    """The model input for the largest located cell, as used for labelled one-cell images."""
    boxes = locate_cells(bgr, settings)
    if not boxes:
        return None, None
    return crop_for_model(bgr, boxes[0], settings.input_size), boxes[0]


def crop_statistics(rgb: np.ndarray, settings: CropSettings) -> np.ndarray:
    """Cheap colour summary of a model input (per-channel mean and spread, stained share), for the
    out-of-distribution check: a crop far from the training crops' statistics is not forced into a class."""
    mean, std = cv2.meanStdDev(rgb)  # OpenCV: ~10x faster than NumPy on a 224 x 224 crop
    blue_minus_green = cv2.subtract(rgb[:, :, 2], rgb[:, :, 1])  # saturates at 0, like "not stained"
    stained = cv2.countNonZero(cv2.compare(blue_minus_green, settings.stain_threshold, cv2.CMP_GT))
    return np.concatenate([mean.ravel(), std.ravel(), [100.0 * stained / (rgb.shape[0] * rgb.shape[1])]])
