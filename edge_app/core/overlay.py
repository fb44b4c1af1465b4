"""Draw classified cells on a frame (boxes, labels, FPS): shared by `hemato run`'s window and the web viewer."""
from __future__ import annotations

import base64
import time

import cv2
import numpy as np

from edge_app.core.pipeline import CellResult
from edge_app.core.wording import overlay_label

# Box colours (BGR) by class index in the model's label order; UNCERTAIN is grey.
PALETTE = [(0, 200, 0), (255, 128, 0), (0, 165, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 0, 255)]
UNCERTAIN_BGR = (160, 160, 160)


def label_origin(box_xyxy: tuple[int, int, int, int], text_size: tuple[int, int], frame_wh: tuple[int, int],
                 gap: int) -> tuple[int, int]:
    """Where a label's text (width, height incl. baseline) goes: its bottom-left corner above the box, clear of
    the cell; below the box when there is no room above; inside the top when neither fits. Kept in the frame."""
    x0, y0, x1, y1 = box_xyxy
    tw, th = text_size
    width, height = frame_wh
    if y0 - gap - th >= 0:
        y = y0 - gap
    elif y1 + gap + th <= height:
        y = y1 + gap + th
    else:
        y = min(height, y0 + th)
    x = min(max(0, x0), max(0, width - tw))
    return x, y


def draw_results(bgr: np.ndarray, cells: list[CellResult], labels: list[str], fps: float | None = None) -> np.ndarray:
    """A copy of the frame with each cell's box and a label beside it (class and confidence, or UNCERTAIN with
    the best guess), and the FPS in the corner. The text grows with the frame: draw on the frame at the size it
    will be shown."""
    out = bgr.copy()
    scale = max(0.45, min(out.shape[:2]) / 600)
    thick = max(1, round(2 * scale))
    pad = max(2, round(3 * scale))
    for cell in cells:
        colour = UNCERTAIN_BGR if cell.uncertain else PALETTE[labels.index(cell.predicted) % len(PALETTE)]
        b = cell.box
        cv2.rectangle(out, (b.x0, b.y0), (b.x1 - 1, b.y1 - 1), colour, thick)
        text = overlay_label(cell)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x, y = label_origin((b.x0, b.y0, b.x1, b.y1), (tw + 2 * pad, th + base + 2 * pad),
                            (out.shape[1], out.shape[0]), thick)
        cv2.rectangle(out, (x, y - th - base - 2 * pad), (x + tw + 2 * pad, y), colour, -1)
        cv2.putText(out, text, (x + pad, y - base - pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
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


def colour_hex(label: str, labels: list[str]) -> str:
    """The overlay's box colour of a class (or UNCERTAIN) as #rrggbb, for the page's bars."""
    b, g, r = PALETTE[labels.index(label) % len(PALETTE)] if label in labels else UNCERTAIN_BGR
    return f"#{r:02x}{g:02x}{b:02x}"


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def rgb_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """JPEG bytes of an RGB image such as a model input (quality 92: close to what the model saw, small)."""
    return encode_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), quality)


def jpeg_data_url(jpeg: bytes) -> str:
    """A data: URL of JPEG bytes, for a page that must not fetch anything."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
