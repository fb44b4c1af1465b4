"""How many pixels a red blood cell spans in a frame: the physical scale of what the camera sees.

Red cells are ~7-8 um across in every smear, so their diameter in pixels measures the magnification of
the camera, and resampling a frame to a fixed red-cell diameter gives the model the same picture of a
cell at any resolution (edge_app.core.vision.scale_frame).

Method, on an analysis copy whose long side is ANALYSIS_SIDE (smaller frames are enlarged, so the fixed
blur and morphology act alike at every resolution and the estimate scales with the image): red cells
absorb green, so Otsu's threshold on the blurred green channel separates them from the pale background.
It is computed over valid pixels only (black padding of rotated frames and white-cell stain excluded).
Round holes (central pallor) are filled; the concave gaps between touching cells are kept. In the
Euclidean distance transform of that mask each red cell's centre is a local maximum whose value is the
radius of the largest disc inside it, for isolated, touching and overlapping cells alike and for cells cut
by the frame edge. Maxima inside a larger disc, on the frame or padding edge, or whose disc reaches
white-cell stain are dropped; the result is the median diameter of the main population (radii near the
area-weighted median: platelets and ridges between cells are many but small).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

ANALYSIS_SIDE = 320     # long side of the analysis copy (the localiser's analysis size)
MIN_CELLS = 3           # fewer measured red cells: no estimate (the caller falls back)
MIN_CONTRAST = 12.0     # least gap (green grey levels) between the cell and background classes
MIN_RADIUS = 2.5        # least inscribed radius of a red cell at analysis size (pixels)
MAX_STAIN_SHARE = 0.25  # a frame mostly white-cell stain (a crop of one cell) has no estimate
MAX_CANDIDATES = 800    # largest discs compared pairwise (bounds the cost of a noisy frame)
_VALID_LEVEL = 40       # darker pixels (all channels) are padding, not smear
_STAIN_LEVEL = 40       # blue minus green above this is white-cell stain
_K3 = np.ones((3, 3), np.uint8)


def analysis_copy(bgr: np.ndarray, side: int = ANALYSIS_SIDE) -> tuple[np.ndarray, float]:
    """The frame resampled to `side` pixels on its long side, and analysis pixels per frame pixel."""
    h, w = bgr.shape[:2]
    s = side / max(h, w)
    if abs(s - 1.0) < 1e-6:
        return bgr, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return small, small.shape[1] / w


def _otsu(hist: np.ndarray) -> tuple[int, float, float]:
    """Otsu's threshold of a 256-bin histogram, with the mean level below and above it."""
    p = hist.astype(np.float64)
    total = p.sum()
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    t = int(np.argmax(between))
    return t, m0[t] / max(w0[t], 1e-9), (m0[-1] - m0[t]) / max(w1[t], 1e-9)


def _fill_pallor(fg: np.ndarray) -> None:
    """Fill round holes in the red-cell mask (central pallor) in place; concave gaps stay open."""
    contours, hierarchy = cv2.findContours(fg, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return
    holes = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent == -1:
            continue
        area = cv2.contourArea(contour)
        if area < 4 or area >= 0.8 * cv2.contourArea(cv2.convexHull(contour)):
            holes.append(contour)
    if holes:
        cv2.drawContours(fg, holes, -1, 255, -1)


def red_cell_radii(small: np.ndarray) -> np.ndarray:
    """Inscribed radii (analysis pixels) of the red cells found in an analysis-size BGR frame."""
    none = np.zeros(0, np.float32)
    b, g = cv2.extractChannel(small, 0), cv2.extractChannel(small, 1)
    h, w = g.shape
    padding = cv2.inRange(small, (0, 0, 0), (_VALID_LEVEL,) * 3)  # every channel dark
    valid = cv2.erode(cv2.bitwise_not(padding), _K3)
    stain = cv2.compare(cv2.subtract(b, g), _STAIN_LEVEL, cv2.CMP_GT)
    smear = cv2.bitwise_and(valid, cv2.bitwise_not(stain))
    green = cv2.GaussianBlur(g, (5, 5), 0)
    hist = cv2.calcHist([green], [0], smear, [256], [0, 256]).ravel()
    n_smear, n_valid = hist.sum(), cv2.countNonZero(valid)
    if n_smear < 0.1 * h * w or n_valid - n_smear > MAX_STAIN_SHARE * n_valid:
        return none
    t, cell_level, background_level = _otsu(hist)
    cell_share = hist[:t + 1].sum() / n_smear
    if background_level - cell_level < MIN_CONTRAST or not 0.03 < cell_share < 0.9:
        return none
    fg = cv2.bitwise_or(cv2.bitwise_and(cv2.compare(green, t, cv2.CMP_LE), valid), stain)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _K3)
    _fill_pallor(fg)
    # padding counts as foreground, like the world outside the frame: a cell cut by it keeps its centre
    inside = cv2.bitwise_or(fg, cv2.bitwise_not(valid))
    if cv2.countNonZero(inside) == h * w:
        return none
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    # candidate centres: local maxima inside cells, off the frame and padding edges
    cand = cv2.bitwise_and(cv2.compare(dist, cv2.dilate(dist, _K3), cv2.CMP_GE),
                           cv2.compare(dist, MIN_RADIUS, cv2.CMP_GE))
    cand = cv2.bitwise_and(cand, fg)
    cand = cv2.bitwise_and(cand, cv2.erode(valid, _K3))
    cand[0, :] = cand[-1, :] = 0
    cand[:, 0] = cand[:, -1] = 0
    points = cv2.findNonZero(cand)
    if points is None:
        return none
    points = points.reshape(-1, 2)
    xs, ys = points[:, 0].astype(np.float32), points[:, 1].astype(np.float32)
    radii = dist[points[:, 1], points[:, 0]]
    order = np.argsort(-radii, kind="stable")[:MAX_CANDIDATES]
    xs, ys, radii = xs[order], ys[order], radii[order]
    # the largest inscribed discs: drop a centre lying inside a larger (earlier) disc
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    covered = (d2 < radii[None, :] ** 2) & np.tri(len(radii), k=-1, dtype=bool)
    keep = ~covered.any(axis=1)
    xs, ys, radii = xs[keep].astype(int), ys[keep].astype(int), radii[keep]
    sx, sy, sw, sh = cv2.boundingRect(stain)
    if sw:  # a disc (slightly enlarged) reaching white-cell stain is not a red cell
        q = (radii * 1.25 + 1).astype(int)
        near = ~((xs + q < sx) | (xs - q >= sx + sw) | (ys + q < sy) | (ys - q >= sy + sh))
        if near.any():  # stain inside each disc's square, from the summed-area table
            table = cv2.integral(stain)
            x0, y0 = np.maximum(xs - q, 0), np.maximum(ys - q, 0)
            x1, y1 = np.minimum(xs + q + 1, w), np.minimum(ys + q + 1, h)
            stained = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
            radii = radii[~near | (stained == 0)]
    return radii


def _main_population(radii: np.ndarray) -> np.ndarray:
    """The radii within 35 % of the area-weighted median (real cells dominate the area)."""
    if len(radii) == 0:
        return radii
    ordered = np.sort(radii)
    area = np.cumsum(ordered.astype(np.float64) ** 2)
    ref = ordered[np.searchsorted(area, 0.5 * area[-1])]
    return radii[(radii > 0.65 * ref) & (radii < 1.35 * ref)]


def estimate_rbc_diameter(bgr: np.ndarray,
                          analysis: tuple[np.ndarray, float] | None = None) -> tuple[float | None, int]:
    """(median red-cell diameter in the frame's pixels, cells measured); None when under MIN_CELLS.

    analysis: the frame's analysis_copy when the caller already has it.
    """
    small, s = analysis or analysis_copy(bgr)
    radii = _main_population(red_cell_radii(small))
    if len(radii) < MIN_CELLS:
        return None, len(radii)
    return 2.0 * float(np.median(radii.astype(np.float64))) / s, len(radii)


def image_diameters(paths: Sequence[str | Path], progress: Callable[[int, int], None] | None = None
                    ) -> Iterator[tuple[np.ndarray | None, float | None]]:
    """(the decoded frame, its red-cell diameter in pixels) for each path in turn; (None, None) for an
    unreadable image. progress(done, total) is called every 500 images and at the end."""
    from edge_app.core.frames import read_image
    for done, path in enumerate(paths, 1):
        bgr, _ = read_image(path)
        yield bgr, None if bgr is None else estimate_rbc_diameter(bgr)[0]
        if progress and (done % 500 == 0 or done == len(paths)):
            progress(done, len(paths))


def training_rbc_diameter(paths: Iterable[str | Path],
                          progress: Callable[[int, int], None] | None = None) -> float:
    """Median red-cell diameter (pixels) over training images: the model's canonical scale.

    progress(done, total) is called every 500 images and at the end (default: a line on stderr).
    Raises ValueError when no image gives an estimate.
    """
    paths = list(paths)
    found = [d for _, d in image_diameters(paths, progress or _print_progress) if d is not None]
    if not found:
        raise ValueError(f"no red-cell diameter could be measured in {len(paths)} images")
    return float(np.median(found))


def _print_progress(done: int, total: int) -> None:
    import sys
    print(f"red-cell scale: {done}/{total} images", file=sys.stderr, flush=True)
