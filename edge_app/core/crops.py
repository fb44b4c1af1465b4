"""Image file -> the model input of its largest cell: how training, calibration, verify and the bench read
labelled one-cell images, through the one decoder (edge_app.core.image_decode)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_app.core.frames import read_image
from edge_app.core.vision import CropSettings, largest_cell_crop

NO_CELL = "no stained cell found"


def file_cell_crop(path: str | Path, settings: CropSettings) -> tuple[np.ndarray | None, str]:
    """(RGB crop of the largest located cell, "") or (None, why not: the decoder's reason or NO_CELL)."""
    bgr, reason = read_image(path)
    if bgr is None:
        return None, reason
    crop, _ = largest_cell_crop(bgr, settings)
    return (crop, "") if crop is not None else (None, NO_CELL)
