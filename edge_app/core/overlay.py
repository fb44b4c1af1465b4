"""Draw classified cells on a frame (boxes, labels, FPS): shared by `hemato run`'s window and the web viewer."""
from __future__ import annotations

import time

import cv2
import numpy as np

from edge_app.core.pipeline import CellResult

# Box colours (BGR) by class index in the model's label order; UNCERTAIN is grey.
PALETTE = [(0, 200, 0), (255, 128, 0), (0, 165, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 0, 255)]
UNCERTAIN_BGR = (160, 160, 160)


def draw_results(bgr: np.ndarray, cells: list[CellResult], labels: list[str], fps: float | None = None) -> np.ndarray:
    """A copy of the frame with each cell's box, label and confidence, and the FPS in the corner."""
    out = bgr.copy()
    scale = max(0.4, min(out.shape[:2]) / 600)
    thick = max(1, round(2 * scale))
    for cell in cells:
        colour = UNCERTAIN_BGR if cell.uncertain else PALETTE[labels.index(cell.predicted) % len(PALETTE)]
        b = cell.box
        cv2.rectangle(out, (b.x0, b.y0), (b.x1 - 1, b.y1 - 1), colour, thick)
        text = f"{cell.label} {cell.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x, y = max(0, b.x0), max(th + base, b.y0)
        cv2.rectangle(out, (x, y - th - base), (x + tw, y), colour, -1)
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(out, f"{fps:.1f} FPS", (8, out.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thick + 2, cv2.LINE_AA)
        cv2.putText(out, f"{fps:.1f} FPS", (8, out.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return out


class FpsMeter:
    """Frames per second, smoothed over the recent frames."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing, self.fps, self._last = smoothing, None, None

    def tick(self) -> float | None:
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            current = 1.0 / (now - self._last)
            self.fps = current if self.fps is None else self.smoothing * self.fps + (1 - self.smoothing) * current
        self._last = now
        return self.fps
