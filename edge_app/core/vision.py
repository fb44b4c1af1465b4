"""What the model sees: locate stained white blood cells in a frame and cut the model input.

This module is the single definition of preprocessing. Training, conversion, verification,
benchmarks and the web viewer import it; nobody re-implements it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from edge_app.core.scale import ANALYSIS_SIDE, analysis_copy, estimate_rbc_diameter

REFERENCE_ASPECT = 4 / 3  # long / short side of the reference frame (the 320 x 240 training photographs)
MIN_SCALED_SIDE = 32      # a frame scaled to the model's red-cell size must stay this large ...
MAX_SCALED_SIDE = 4096    # ... and no larger (the decoder's limit): else the scale is not believed


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
    # The physical scale: the median red-cell diameter (pixels) of the training frames. A frame whose own
    # diameter is known (edge_app.core.scale, or the user's) is resampled so its red cells span this many
    # pixels before cells are located and cut, so the model sees a cell alike from any camera. None: crops
    # are relative to the frame and nucleus alone (models made before the scale was stored).
    rbc_diameter_px: float | None = None
    # At that scale the lengths above are fractions of this short side (the training frames' short side)
    # and the areas fractions of a 4:3 frame with it, rather than of each frame's own size.
    reference_short_side: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "CropSettings":
        """The settings a model file's metadata carries: its "crop" entry with the model's input size (the
        top-level "input_size", else the crop's own, else the default)."""
        crop = meta.get("crop", {})
        return cls.from_dict({**crop, "input_size": int(meta.get("input_size", crop.get("input_size", 224)))})


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

    def divided_by(self, scale: float) -> "Box":
        """The box in pixels `scale` times fewer (e.g. of an image decoded reduced by that factor)."""
        if scale == 1.0:
            return self
        return Box(round(self.x0 / scale), round(self.y0 / scale), round(self.x1 / scale), round(self.y1 / scale),
                   round(self.stained_area / scale / scale))


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


def locate_cells(bgr: np.ndarray, settings: CropSettings, canonical: bool = False,
                 analysis: tuple[np.ndarray, float] | None = None) -> list[Box]:
    """Return one square crop box per stained white blood cell, largest first.

    canonical: the frame is at the settings' red-cell scale (scale_frame), so lengths and areas are
    fractions of the reference frame, not of this one.
    analysis: (the frame at most analysis_max_side on its long side, its pixels per frame pixel) when the
    caller has it; else it is made here.
    """
    height, width = bgr.shape[:2]
    if analysis is not None:
        small, scale = analysis
    else:
        scale = min(1.0, settings.analysis_max_side / max(height, width))
        small = bgr if scale == 1.0 else cv2.resize(bgr, (round(width * scale), round(height * scale)),
                                                   interpolation=cv2.INTER_AREA)
    mask = stain_mask(small, settings)
    sh, sw = mask.shape
    short, area = min(sh, sw), sh * sw
    if canonical and settings.reference_short_side:
        short = settings.reference_short_side * scale
        area = short * short * REFERENCE_ASPECT
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    radius = max(1, round(settings.merge_frac * short))
    # Only the stained pixels' bounding box, widened by the merge reach, can hold a cell: merging and
    # labelling that window alone finds the same cells at a fraction of the cost (the dilation dominated).
    x, y, w, h = cv2.boundingRect(mask)
    if not w:
        return []
    ox, oy = max(0, x - radius), max(0, y - radius)
    mask = mask[oy:min(sh, y + h + radius), ox:min(sw, x + w + radius)]
    merged = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    boxes = []
    min_area = settings.min_area_frac * area
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        cell = (labels[y:y + h, x:x + w] == label) & (mask[y:y + h, x:x + w] > 0)
        stained = int(cell.sum())
        if stained < min_area:
            continue
        if _largest_blob_area(cell) < settings.min_lobe_frac * area:
            continue
        ys, xs = np.nonzero(cell)
        x, y = ox + x + xs.min(), oy + y + ys.min()
        w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
        side = max(settings.crop_scale * max(w, h), settings.min_crop_frac * short)
        cx, cy = x + w / 2, y + h / 2
        box = [(cx - side / 2) / scale, (cy - side / 2) / scale, (cx + side / 2) / scale, (cy + side / 2) / scale]
        x0, y0, x1, y1 = (round(v) for v in box)
        boxes.append(Box(x0, y0, x1, y1, round(stained / scale / scale)))
    boxes.sort(key=lambda b: b.stained_area, reverse=True)
    return boxes


@dataclass(frozen=True, eq=False)
class ScaledFrame:
    """A frame as the localiser and the crops use it: resampled to the model's red-cell scale when both the
    model's and the frame's red-cell diameters are known, else the frame itself (nucleus-relative crops)."""

    image: np.ndarray
    factor: float = 1.0          # image pixels per frame pixel
    rbc_px: float | None = None  # the frame's red-cell diameter (frame pixels) it was scaled by; None: not scaled
    # The frame at ANALYSIS_SIDE on its long side (the red-cell estimate's copy) and its pixels per image
    # pixel: the localiser reads it instead of shrinking `image` again (one resampling, not two).
    analysis: tuple[np.ndarray, float] | None = None

    @property
    def canonical(self) -> bool:
        return self.rbc_px is not None

    def to_frame(self, box: Box) -> Box:
        """A box of `image` in the frame's pixels."""
        return box.divided_by(self.factor)


def _scaled(image: np.ndarray, factor: float, rbc_px: float | None, analysis: tuple[np.ndarray, float] | None,
            settings: CropSettings, frame: np.ndarray | None = None) -> ScaledFrame:
    """The ScaledFrame, with an analysis copy where the localiser would shrink `image` to that size: the
    estimate's, else one made from the original `frame` (a given diameter), so it is resampled once."""
    if not max(image.shape[:2]) > settings.analysis_max_side == ANALYSIS_SIDE:
        return ScaledFrame(image, factor, rbc_px)
    if analysis is None and frame is not None:
        analysis = analysis_copy(frame)
    keep = (analysis[0], analysis[1] / factor) if analysis is not None else None
    return ScaledFrame(image, factor, rbc_px, keep)


def frame_red_cells(bgr: np.ndarray, settings: CropSettings,
                    rbc_px: float | None = None) -> tuple[float | None, tuple[np.ndarray, float] | None]:
    """The frame's red-cell diameter in pixels and the estimate's analysis copy: rbc_px when given (a
    camera's calibration), else estimated when the model carries a scale; (None, None) when it has none."""
    if not settings.rbc_diameter_px or rbc_px is not None:
        return rbc_px, None
    analysis = analysis_copy(bgr)
    return estimate_rbc_diameter(bgr, analysis)[0], analysis


def rescale_frame(bgr: np.ndarray, settings: CropSettings, rbc_px: float | None,
                  analysis: tuple[np.ndarray, float] | None = None) -> ScaledFrame:
    """The frame resampled to the model's red-cell scale, given its red-cell diameter (frame_red_cells).
    Unscaled when the model has no scale, the diameter is unknown, or the resampled frame would be
    implausibly large or small."""
    if not settings.rbc_diameter_px:
        return ScaledFrame(bgr)
    if not rbc_px or rbc_px <= 0:
        return _scaled(bgr, 1.0, None, analysis, settings)
    factor = settings.rbc_diameter_px / rbc_px
    height, width = bgr.shape[:2]
    size = (round(width * factor), round(height * factor))
    if min(size) < MIN_SCALED_SIDE or max(size) > MAX_SCALED_SIDE:
        return _scaled(bgr, 1.0, None, analysis, settings)
    if size == (width, height):
        return _scaled(bgr, 1.0, rbc_px, analysis, settings)
    image = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return _scaled(image, size[0] / width, rbc_px, analysis, settings, frame=bgr)


def scale_frame(bgr: np.ndarray, settings: CropSettings, rbc_px: float | None = None) -> ScaledFrame:
    """The frame at the model's red-cell scale: rbc_px is its red-cell diameter in pixels when known (a
    camera's calibration), else it is estimated (frame_red_cells, then rescale_frame)."""
    return rescale_frame(bgr, settings, *frame_red_cells(bgr, settings, rbc_px))


def located_cells(frame: ScaledFrame, settings: CropSettings) -> list[Box]:
    """The cells of a scaled frame, boxes in its image's pixels (ScaledFrame.to_frame maps them back)."""
    return locate_cells(frame.image, settings, canonical=frame.canonical, analysis=frame.analysis)


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


def largest_cell_crop(bgr: np.ndarray, settings: CropSettings,
                      rbc_px: float | None = None) -> tuple[np.ndarray | None, Box | None]:
    """The model input for the largest located cell, as used for labelled one-cell images (box in frame pixels).

    rbc_px: the frame's red-cell diameter when known; else estimated when the settings carry a scale.
    """
    frame = scale_frame(bgr, settings, rbc_px)
    boxes = located_cells(frame, settings)
    if not boxes:
        return None, None
    return crop_for_model(frame.image, boxes[0], settings.input_size), frame.to_frame(boxes[0])


def crop_statistics(rgb: np.ndarray, settings: CropSettings) -> np.ndarray:
    """Cheap colour summary of a model input (per-channel mean and spread, stained share), for the
    out-of-distribution check: a crop far from the training crops' statistics is not forced into a class."""
    mean, std = cv2.meanStdDev(rgb)  # OpenCV: ~10x faster than NumPy on a 224 x 224 crop
    blue_minus_green = cv2.subtract(rgb[:, :, 2], rgb[:, :, 1])  # saturates at 0, like "not stained"
    stained = cv2.countNonZero(cv2.compare(blue_minus_green, settings.stain_threshold, cv2.CMP_GT))
    return np.concatenate([mean.ravel(), std.ravel(), [100.0 * stained / (rgb.shape[0] * rgb.shape[1])]])
