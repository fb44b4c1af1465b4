"""The web viewer's live view: a background thread classifies camera frames and serves them as MJPEG.

Frames come from edge_app.core.sources (camera index, picamera, video file) and are drawn by edge_app.core.overlay,
as in `hemato run`; unlike `run`, a lost camera is retried forever and a file loops, so the page stays up.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import cv2
import numpy as np

from edge_app.core.frames import as_bgr
from edge_app.core.model import Classifier
from edge_app.core.overlay import FpsMeter, draw_results, encode_jpeg
from edge_app.core.pipeline import FrameResult, classify_frame
from edge_app.core.sources import SourceLost, open_source

log = logging.getLogger(__name__)

FILE_PERIOD_S = 0.1  # video files and images are replayed at about 10 frames per second


def message_frame(text: str, width: int = 640, height: int = 360) -> bytes:
    """A grey JPEG carrying a message, streamed while the camera is unavailable."""
    img = np.full((height, width, 3), 60, np.uint8)
    for i, line in enumerate(text.splitlines() or [""]):
        cv2.putText(img, line[:60], (20, 40 + 30 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return encode_jpeg(img)


class LiveCamera:
    """Reads a source (camera index, picamera, video file) in a thread, classifies each frame, keeps the latest."""

    def __init__(self, classifier: Classifier, spec: str, lock: threading.Lock,
                 min_confidence: float | None = None, retry_s: float = 2.0, rbc_diameter: float | None = None):
        self.classifier, self.spec, self.lock = classifier, spec, lock
        self.min_confidence, self.retry_s, self.rbc_diameter = min_confidence, retry_s, rbc_diameter
        self.jpeg: bytes | None = None
        self.result: FrameResult | None = None
        self.seq = 0
        self.fps = 0.0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fps = FpsMeter()
        self._thread = threading.Thread(target=self._run, name="hemato-live", daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "LiveCamera":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish, wake stream readers and wait until the camera is released."""
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
        """The newest JPEG once it is newer than `after_seq` (None on timeout or stop), and its number."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after_seq or self._stop.is_set(), timeout)
            if self.seq > after_seq and self.jpeg is not None:
                return self.jpeg, self.seq
            return None, after_seq

    def _publish(self, jpeg: bytes, result: FrameResult | None, fps: float, error: str | None) -> None:
        with self._cond:
            self.jpeg, self.result, self.fps, self.error = jpeg, result, fps, error
            self.seq += 1
            self._cond.notify_all()

    def _fail(self, message: str) -> None:
        """Show the problem on the stream and the page, then wait before trying again."""
        log.warning("live view: %s", message)
        self._publish(message_frame(f"{message}\nretrying every {self.retry_s:g} s"), None, 0.0, message)
        self._fps = FpsMeter()
        self._stop.wait(self.retry_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                source = open_source(self.spec, stop=self._stop)
            except Exception as exc:  # SourceError says why; anything else must not end the thread either
                self._fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            frames = 0
            try:
                for frame in source:
                    if self._stop.is_set():
                        break
                    if frame.image is None:
                        self._fail(f"{frame.source}: {frame.error}")
                        continue
                    self._process(as_bgr(frame.image))
                    frames += 1
                    if not source.live:
                        self._stop.wait(FILE_PERIOD_S)
            except SourceLost as exc:
                self._fail(str(exc))
            except Exception as exc:  # keep the server up: report it on the page and retry
                self._fail(f"live view failed: {exc}".splitlines()[0])
            else:
                if not frames and not self._stop.is_set():
                    self._fail(f"{self.spec} has no frames")
            finally:
                source.close()

    def _process(self, bgr: np.ndarray) -> None:
        with self.lock:
            result = classify_frame(self.classifier, bgr, self.min_confidence, self.rbc_diameter)
        rate = self._fps.tick() or self.fps  # frames classified per second, smoothed; kept across file loops
        shown = draw_results(bgr, result.cells, self.classifier.labels, rate)
        self._publish(encode_jpeg(shown), result, rate, None)


def mjpeg_stream(camera: LiveCamera, boundary: str = "frame") -> Iterator[bytes]:
    """multipart/x-mixed-replace parts, one per new frame, until the camera stops or the client leaves."""
    seq = 0
    while not camera.stopped:
        jpeg, seq = camera.wait_frame(seq, timeout=1.0)
        if jpeg is not None:
            yield (f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                   + jpeg + b"\r\n")
