"""Image file -> upright 8-bit BGR frame, or a one-line reason why not; bounded in size and memory.

Limits (README, `hemato run`): files over MAX_FILE_BYTES and images over MAX_PIXELS (half that for 16-bit
samples) are refused before decoding, as are images under MIN_SIDE pixels a side. Images over
ANALYSIS_MAX_SIDE on the long side are kept at 1/2, 1/4 or 1/8 scale: JPEGs are decoded reduced by
libjpeg (cheap), other formats are decoded whole and then shrunk.
"""
from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge_app.core.image_header import HeaderError, read_header

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 100_000_000          # 10000 x 10000 at 8 bits a sample; 50 MP at 16 bits
ANALYSIS_MAX_SIDE = 4096          # larger images are reduced (cell crops stay far above the model's input)
MIN_SIDE = 32                     # smaller cannot hold a cell the model can see
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageError(ValueError):
    """The image cannot be used; the message (one line) is what the CSV's error column says."""


@dataclass
class Decoded:
    """A BGR uint8 frame, upright (EXIF orientation applied); `scale` source pixels per frame pixel."""

    image: np.ndarray
    scale: float = 1.0


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Keep libjpeg/libpng/libtiff messages about damaged data off stderr: one per bad file would flood
    the log of a long run, and the CSV's error column already says what happened."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no usable stderr: nothing to protect
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_bytes(path: str | Path) -> bytes:
    """The whole file, read once; ImageError when empty, too large or not a regular file.

    FileNotFoundError propagates (a file that vanished), other OSErrors become ImageError.
    """
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("cannot read file: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(f"file too large: {info.st_size / 2**20:.0f} MB (the limit is {MAX_FILE_BYTES // 2**20} MB)")
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"file too large: over {MAX_FILE_BYTES // 2**20} MB (the limit)")
    if not data:
        raise ImageError("empty file")
    return data


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit samples: 16-bit (and other integer) images are scaled by their significant bits, floats from 0..1."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        top = max(0, int(image.max()))
        bits = max(8, top.bit_length())  # a 12-bit camera in a 16-bit file: 0..4095 -> 0..255
        if image.dtype.kind == "i":
            image = np.clip(image, 0, None)
        return cv2.convertScaleAbs(image, alpha=255.0 / (2 ** bits - 1))
    image = np.nan_to_num(image.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    top = max(1.0, float(image.max()))
    return cv2.convertScaleAbs(np.clip(image, 0, None), alpha=255.0 / top)


def _reduction(width: int, height: int) -> int:
    """1, 2, 4 or 8: the smallest factor bringing the long side to ANALYSIS_MAX_SIDE (8 at most)."""
    factor = 1
    while max(width, height) / factor > ANALYSIS_MAX_SIDE and factor < 8:
        factor *= 2
    return factor


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode an image file's bytes to an upright BGR uint8 frame; ImageError (one line) when it cannot be used.

    Grey, palette, 16-bit and CMYK images are converted; alpha is ignored (the colour under it is kept).
    max_pixels: the size limit at 8 bits a sample (the web viewer sets a lower one).
    """
    if not data:
        raise ImageError("empty file")
    try:
        header = read_header(data)
    except HeaderError as exc:
        raise ImageError(str(exc)) from None
    w, h = header.width, header.height
    limit = max_pixels // header.sample_bytes
    if w * h > limit:
        depth = f" at {8 * header.sample_bytes} bits" if header.sample_bytes > 1 else ""
        raise ImageError(f"image too large: {w}x{h} is {w * h / 1e6:.0f} MP (the limit is {limit // 10**6} MP{depth})")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image too small ({w}x{h}; a cell needs at least {MIN_SIDE} px a side)")
    factor = _reduction(w, h)
    # JPEG: libjpeg decodes reduced and converts grey, CMYK and YCCK to BGR. Others: 3 channels, depth kept
    # for to_uint8. Both apply the EXIF orientation.
    flags = _REDUCED[factor] if header.format == "JPEG" else cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
    try:
        with _quiet_decoders():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if image is not None and image.ndim == 3 and image.size:
            image = to_uint8(image)
            rows, cols = image.shape[:2]
            if max(rows, cols) > ANALYSIS_MAX_SIDE:  # decoded whole (not a JPEG): shrink, free the original
                size = (max(1, round(cols / factor)), max(1, round(rows / factor)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    except cv2.error:
        image = None
    except MemoryError:
        raise ImageError(f"not enough memory to decode this {w}x{h} {header.format}") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise ImageError(f"damaged {header.format}: it cannot be decoded")
    return Decoded(image, max(w, h) / max(image.shape[:2]))


def load_image(path: str | Path) -> Decoded:
    """Read and decode one image file; ImageError says why it cannot be used, FileNotFoundError if it vanished."""
    return decode_image(read_bytes(path))
