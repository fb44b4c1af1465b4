"""The web viewer's live camera: a background thread that classifies frames and serves them as MJPEG.

Also holds the small box drawing used by the web pages (to merge with edge_app/overlay.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_app.model import Classifier
from edge_app.pipeline import CellResult, FrameResult, classify_frame

log = logging.getLogger(__name__)

# One colour per class index (BGR), shared with the page's bars; UNCERTAIN is grey.
PALETTE_BGR = [(60, 76, 231), (219, 152, 52), (113, 204, 46), (18, 156, 243), (182, 89, 155),
               (156, 188, 26), (34, 126, 230), (94, 73, 52)]
UNCERTAIN_BGR = (128, 128, 128)


def colour_hex(index: int) -> str:
    """The palette colour of class `index` as #rrggbb, for the page."""
    b, g, r = PALETTE_BGR[index % len(PALETTE_BGR)]
    return f"#{r:02x}{g:02x}{b:02x}"


def draw_cells(bgr: np.ndarray, cells: list[CellResult], labels: list[str], scale: float = 1.0) -> np.ndarray:
    """A copy of the frame with each cell boxed and captioned "LABEL 93%"; boxes are scaled by `scale`."""
    out = bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    font = max(0.4, min(h, w) / 700)
    for cell in cells:
        b = cell.box
        x0, y0, x1, y1 = (round(v * scale) for v in (b.x0, b.y0, b.x1, b.y1))
        if cell.uncertain:
            colour, text = UNCERTAIN_BGR, f"uncertain ({cell.predicted} {cell.confidence:.0%})"
        else:
            colour = PALETTE_BGR[labels.index(cell.predicted) % len(PALETTE_BGR)]
            text = f"{cell.label} {cell.confidence:.0%}"
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        tx, ty = min(max(0, x0), max(0, w - tw)), max(th + base, y0)
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty), colour, -1)
        cv2.putText(out, text, (tx, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def message_frame(text: str, width: int = 640, height: int = 360) -> bytes:
    """A grey JPEG carrying a message, streamed while the camera is unavailable."""
    img = np.full((height, width, 3), 60, np.uint8)
    for i, line in enumerate(text.splitlines() or [""]):
        cv2.putText(img, line[:60], (20, 40 + 30 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return encode_jpeg(img)


class LiveCamera:
    """Reads a camera index or video file in a thread, classifies every frame it can and keeps the latest."""

    def __init__(self, classifier: Classifier, source: int | str, lock: threading.Lock,
                 min_confidence: float | None = None, retry_s: float = 2.0):
        self.classifier, self.source, self.lock = classifier, source, lock
        self.min_confidence, self.retry_s = min_confidence, retry_s
        self.is_file = isinstance(source, str) and Path(source).is_file()
        self.jpeg: bytes | None = None
        self.result: FrameResult | None = None
        self.seq = 0
        self.fps = 0.0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hemato-live", daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> "LiveCamera":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish, wake stream readers and wait for the camera to be released."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def snapshot(self) -> tuple[FrameResult | None, float, str | None]:
        """The latest frame's result, the FPS and the current error (None when fine)."""
        with self._cond:
            return self.result, self.fps, self.error

    def wait_frame(self, after_seq: int, timeout: float = 1.0) -> tuple[bytes | None, int]:
        """The next JPEG newer than `after_seq` (or None on timeout/stop) and its sequence number."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after_seq or self._stop.is_set(), timeout)
            if self.seq > after_seq and self.jpeg is not None:
                return self.jpeg, self.seq
            return None, after_seq

    def _publish(self, jpeg: bytes, result: FrameResult | None, error: str | None) -> None:
        with self._cond:
            self.jpeg, self.result, self.error = jpeg, result, error
            self.seq += 1
            self._cond.notify_all()

    def _fail(self, message: str) -> None:
        log.warning("live camera: %s", message)
        self._publish(message_frame(message), None, message)
        self.fps = 0.0
        self._stop.wait(self.retry_s)

    def _run(self) -> None:
        cap = None
        last = None
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = cv2.VideoCapture(self.source)
                    if not cap.isOpened():
                        cap.release()
                        cap = None
                        self._fail(f"cannot open camera {self.source}\nretrying every {self.retry_s:g} s")
                        continue
                    period = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 10.0) if self.is_file else 0.0
                ok, frame = cap.read()
                if not ok and self.is_file:  # a video file loops, handy for demos and tests
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                if not ok or frame is None:
                    cap.release()
                    cap = None
                    self._fail(f"camera {self.source} delivers no frames\nretrying every {self.retry_s:g} s")
                    continue
                try:
                    self._process(frame)
                except Exception as exc:  # keep serving: a bad frame must not kill the stream
                    self._fail(f"classification failed: {exc}")
                    continue
                now = time.perf_counter()
                if last is not None:
                    dt = max(now - last, 1e-6)
                    self.fps = 1 / dt if self.fps == 0 else 0.8 * self.fps + 0.2 / dt
                    if period > dt:
                        self._stop.wait(period - dt)
                        now = time.perf_counter()
                last = now
        finally:
            if cap is not None:
                cap.release()

    def _process(self, frame: np.ndarray) -> None:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        with self.lock:
            result = classify_frame(self.classifier, frame, self.min_confidence)
        shown = draw_cells(frame, result.cells, self.classifier.labels)
        text = f"{self.fps:.1f} FPS  {len(result.cells)} cell(s)"
        cv2.putText(shown, text, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(shown, text, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        self._publish(encode_jpeg(shown), result, None)


def mjpeg_stream(camera: LiveCamera, boundary: str = "frame") -> Iterator[bytes]:
    """multipart/x-mixed-replace parts, one per new frame, until the camera stops or the client leaves."""
    seq = 0
    while not camera.stopped:
        jpeg, seq = camera.wait_frame(seq, timeout=1.0)
        if jpeg is not None:
            yield (f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                   + jpeg + b"\r\n")
