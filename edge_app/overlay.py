"""Draw results on a frame and show it in a window, falling back to headless when there is no GUI."""
from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np

from edge_app.pipeline import CellResult

# Box colours (BGR) by class index in the model's label order; UNCERTAIN is grey.
PALETTE = [(0, 200, 0), (255, 128, 0), (0, 165, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 0, 255)]
UNCERTAIN_BGR = (160, 160, 160)
WINDOW = "hemato run"


def display_available() -> bool:
    """False on Linux without DISPLAY or WAYLAND_DISPLAY (a headless Pi, SSH, CI)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


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


class Display:
    """A window for annotated frames; turns itself off (saying so once) when OpenCV has no GUI."""

    def __init__(self, wait_ms: int = 1):
        self.enabled, self.wait_ms = True, wait_ms

    def show(self, bgr: np.ndarray) -> bool:
        """Show the frame; False when the user pressed q or Esc to end the run."""
        if not self.enabled:
            return True
        try:
            cv2.imshow(WINDOW, bgr)
            key = cv2.waitKey(self.wait_ms) & 0xFF
        except cv2.error as exc:
            reason = (getattr(exc, "err", None) or str(exc) or "no GUI support").strip().split(". ")[0]
            print(f"hemato run: cannot open a window (cv2.imshow: {reason}); continuing headless. "
                  "opencv-python-headless has no GUI: install opencv-python to use --show.", file=sys.stderr)
            self.enabled = False
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
