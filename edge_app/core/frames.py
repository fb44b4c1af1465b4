"""The unit every source yields (Frame), and still images read into one."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_app.core.image_decode import ImageError, load_image
from edge_app.core.pipeline import CellResult
from edge_app.core.vision import Box

VANISHED = "file vanished before it was read"


@dataclass
class Frame:
    """One frame to classify: `image` is BGR uint8, or None with `error` saying why."""

    source: str
    index: int
    image: np.ndarray | None
    error: str = ""
    decode_ms: float = 0.0
    scale: float = 1.0  # source-image pixels per `image` pixel (huge images are reduced)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Three-channel BGR from grey or BGRA camera frames."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def read_image(path: str | Path) -> tuple[np.ndarray | None, str]:
    """Decode an image file to upright BGR (edge_app.core.image_decode: limits, conversions, huge images reduced);
    (None, reason) when it cannot be used."""
    try:
        return load_image(path).image, ""
    except ImageError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, VANISHED


def utf8_text(text: str | Path) -> str:
    """A file's name (or a message with one) as the CSV and the terminal show it: bytes of a name that are not
    UTF-8 (a file copied from an older system) written as \\udcXX, so that writing it can never stop a run."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def image_frame(path: Path) -> Frame:
    """One still image as a timed Frame (an error Frame when unusable); FileNotFoundError if it vanished."""
    start = time.perf_counter()
    try:
        decoded = load_image(path)
        image, error, scale = decoded.image, "", decoded.scale
    except ImageError as exc:
        image, error, scale = None, str(exc), 1.0
    except FileNotFoundError:
        raise
    except Exception as exc:  # a reader bug must cost one image, not an unattended run
        image, error, scale = None, f"cannot read image: {type(exc).__name__}: {exc}".splitlines()[0], 1.0
    return Frame(utf8_text(path), 0, image, utf8_text(error), (time.perf_counter() - start) * 1000, scale)


def scaled_cell(cell: CellResult, scale: float) -> CellResult:
    """The cell with its box multiplied by scale: into a source image's pixels (a reduced huge image's frame), or
    into a resized picture's."""
    if scale == 1.0:
        return cell
    b = cell.box
    box = Box(round(b.x0 * scale), round(b.y0 * scale), round(b.x1 * scale), round(b.y1 * scale),
              round(b.stained_area * scale * scale))
    return dataclasses.replace(cell, box=box)
