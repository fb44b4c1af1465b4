"""The cells a laboratory gives `hemato adapt`: class folders of images, or the review page's CSV.

Everything that can be refused is refused before any image is decoded (unknown class, too few files, no images);
then every image is decoded and its cell located, and unreadable images or images without a cell are listed
and skipped; a class left with 1 to MIN_CELLS - 1 usable cells, or fewer than two classes with cells, is refused
before the backbone runs. A class with no cells at all keeps the base model's answer for it (a rare class such
as basophils need not wait).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_app.core.crops import NO_CELL
from edge_app.core.dataset import images_in
from edge_app.core.frames import as_bgr
from edge_app.core.image_decode import Decoded, ImageError, load_image
from edge_app.core.pipeline import UNCERTAIN
from edge_app.core.records import CELL_COLUMNS, is_reviewed, read_rows, row_box, row_image
from edge_app.core.vision import Box, CropSettings, crop_for_model, largest_cell_crop

MIN_CELLS = 3
# name.crop.jpg / name.crop.png: the model's input itself (as the review page's zip holds them), used as it is
CROP_MARK = ".crop"


class CellsError(ValueError):
    """The cells cannot be used for adaptation; the message says what to fix."""


@dataclass
class CellPlan:
    """One cell to read: an image, the box of the cell in it (None: locate the largest), its class."""

    path: Path
    label: str
    box: Box | None = None


@dataclass
class CellSet:
    """Model inputs of the usable cells with their classes; what was skipped and why."""

    crops: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def counts(self, labels: list[str]) -> dict[str, int]:
        return {label: self.labels.count(label) for label in labels}

    def missing(self, labels: list[str]) -> list[str]:
        """The classes given no cells: kept as the base model learnt them."""
        return [label for label, n in self.counts(labels).items() if n == 0]


def _too_few(counts: Counter, labels: list[str]) -> str:
    """Why these cells per class cannot teach the model ("" when they can): a class given 1 to MIN_CELLS - 1
    cells, or fewer than two classes with cells (a class without any cell keeps the base model's answer)."""
    few = ", ".join(f"{label} {counts[label]}" for label in labels if 0 < counts[label] < MIN_CELLS)
    if few:
        return (f"too few cells of {few}: give at least {MIN_CELLS} of a class, or none (a class without cells "
                "is kept as the base model learnt it)")
    if sum(counts[label] >= MIN_CELLS for label in labels) < 2:
        return f"at least two classes need {MIN_CELLS} cells or more"
    return ""


def _check_classes(found: Counter, labels: list[str], what: str) -> None:
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise CellsError(f"{what}: {', '.join(unknown)} not a class of this model (its classes: {', '.join(labels)})")
    few = _too_few(found, labels)
    if few:
        raise CellsError(f"{what}: {few}")


def plan_folder(root: Path, labels: list[str]) -> list[CellPlan]:
    """ROOT/<CLASS>/*image* as cells to read; CellsError for unknown classes, missing images or too few."""
    root = Path(root)
    folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not folders:
        raise CellsError(f"{root}: expected one folder per class ({root}/{labels[0]}/*.jpg, ...)")
    plans = [CellPlan(path, d.name) for d in folders for path in images_in(d)]
    if not plans:
        raise CellsError(f"{root}: no images (.jpg .png ...) in its class folders")
    found = Counter({d.name: 0 for d in folders})  # an empty folder still names a class
    found.update(plan.label for plan in plans)
    _check_classes(found, labels, str(root))
    return plans


def plan_csv(path: Path, labels: list[str]) -> list[CellPlan]:
    """The reviewed rows of a review export (source, x0..y1, label, reviewed) as cells to read."""
    path = Path(path)
    try:
        rows, header = read_rows(path)
    except ValueError as exc:
        raise CellsError(f"{exc}: give a review export CSV or a folder of class folders") from None
    columns = set(header)
    if not CELL_COLUMNS <= columns:
        raise CellsError(f"{path}: not a review export (columns {', '.join(sorted(CELL_COLUMNS - columns))} missing)")
    if "reviewed" not in columns:
        raise CellsError(f"{path}: no 'reviewed' column: these are the model's own answers; review the cells "
                         "first (hemato serve --review CSV, then 'Export reviewed cells')")
    plans = []
    for row in rows:
        if row.get("error") or not is_reviewed(row) or row["label"] in ("", UNCERTAIN):
            continue
        try:
            box = row_box(row)
        except ValueError as exc:
            raise CellsError(f"{path}: {exc}; correct or delete that row") from None
        plans.append(CellPlan(row_image(row["source"], path), row["label"], box))
    if not plans:
        raise CellsError(f"{path}: no reviewed cells in it")
    _check_classes(Counter(plan.label for plan in plans), labels, str(path))
    return plans


def plan_cells(cells: Path, labels: list[str]) -> list[CellPlan]:
    """A folder of class folders, or a review export CSV."""
    cells = Path(cells)
    if not cells.exists():
        raise CellsError(f"{cells}: not found")
    return plan_csv(cells, labels) if cells.is_file() else plan_folder(cells, labels)


def decode(path: Path) -> tuple[Decoded | None, str]:
    """(the decoded image, "") or (None, why it cannot be used)."""
    try:
        return load_image(path), ""
    except ImageError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, "file not found"


def read_cell(plan: CellPlan, decoded: Decoded, settings: CropSettings) -> tuple[np.ndarray | None, str]:
    """(the model input for one planned cell, "") or (None, why it is skipped), from its decoded image."""
    bgr = as_bgr(decoded.image)
    if plan.path.stem.endswith(CROP_MARK):
        return cv2.cvtColor(cv2.resize(bgr, (settings.input_size,) * 2, interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB), ""
    if plan.box is not None:
        box = plan.box.divided_by(decoded.scale)  # boxes are in source pixels; huge images are decoded reduced
        if box.x1 <= box.x0 or box.y1 <= box.y0:
            return None, "empty box"
        return crop_for_model(bgr, box, settings.input_size), ""
    crop, _ = largest_cell_crop(bgr, settings)
    return (crop, "") if crop is not None else (None, NO_CELL)


def load_cells(plans: list[CellPlan], labels: list[str], settings: CropSettings) -> CellSet:
    """Decode and crop every planned cell; CellsError when a class is left with too few usable cells."""
    cells = CellSet()
    path, (decoded, unusable) = None, (None, "")
    for plan in plans:
        if plan.path != path:  # a review export lists an image's cells one after another: decode it once
            path, (decoded, unusable) = plan.path, decode(plan.path)
        crop, reason = read_cell(plan, decoded, settings) if decoded is not None else (None, unusable)
        if crop is None:
            cells.skipped.append((str(plan.path), reason))
            continue
        cells.crops.append(crop)
        cells.labels.append(plan.label)
        cells.sources.append(str(plan.path))
    usable = Counter(cells.labels)
    lost = sorted({plan.label for plan in plans} - set(usable))
    if lost:  # given, but nothing usable: not the same as not given
        raise CellsError(f"no usable cell of {', '.join(lost)} is left after skipping "
                         f"{_images(len(cells.skipped))}; give usable images, or remove the class to keep it as "
                         "the base model learnt it")
    few = _too_few(usable, labels)
    if few:
        raise CellsError(f"after skipping {_images(len(cells.skipped))}, {few}")
    return cells


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"


def augmented_crops(rgb: np.ndarray, copies: int) -> list[np.ndarray]:
    """The crop and up to `copies` light variants: mirrored, turned 45 degrees, both (the graph adds 90-degree turns)."""
    size = rgb.shape[0]
    turn = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), 45, 1.0)

    def rotate(image: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, turn, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    mirrored = np.ascontiguousarray(rgb[:, ::-1])
    return [rgb, mirrored, rotate(rgb), rotate(mirrored)][:1 + copies]
