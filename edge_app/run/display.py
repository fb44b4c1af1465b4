"""`hemato run --show`: a window for annotated frames, falling back to headless when there is no GUI."""
from __future__ import annotations

import os
import sys

import cv2
import numpy as np

WINDOW = "hemato run"


def display_available() -> bool:
    """False on Linux without DISPLAY or WAYLAND_DISPLAY (a headless Pi, SSH, CI)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


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
