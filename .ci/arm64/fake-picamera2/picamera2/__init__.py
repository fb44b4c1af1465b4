"""A fake `picamera2` for .ci/arm64-check: Picamera2 delivering frames made from sample images, no camera.

Only on PYTHONPATH inside the emulated arm64 virtualenv. It offers what edge_app/sources.py calls
(create_preview_configuration/create_still_configuration/create_video_configuration, configure, start,
capture_array, stop, close) and returns arrays in the byte order real Picamera2 gives for the requested
format: Picamera2 names formats after DRM fourccs (little-endian), so "BGR888" arrays are R, G, B per pixel,
"RGB888" are B, G, R, and the 32-bit "XBGR8888"/"XRGB8888" are R, G, B, X / B, G, R, X.

Environment:
  HEMATO_FAKE_PICAMERA2_FRAMES   folder of BGR images (sorted by name) delivered one per capture_array, in turn
  HEMATO_FAKE_PICAMERA2_COUNT    how many frames to deliver (default: one per image); with the last one the
                                 fake sends SIGINT to its own process, as an operator pressing Ctrl-C would,
                                 so `hemato run picamera` stops after that frame and prints its summary
  HEMATO_FAKE_PICAMERA2_LOG      optional file: one line per call, for the check to read back
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Picamera2"]

# format -> how to turn an OpenCV BGR image into the array Picamera2 returns for it
_FORMATS = {
    "BGR888": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
    "RGB888": lambda bgr: bgr.copy(),
    "XBGR8888": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA),
    "XRGB8888": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
}


def _log(text: str) -> None:
    path = os.environ.get("HEMATO_FAKE_PICAMERA2_LOG")
    if path:
        with open(path, "a") as out:
            out.write(text + "\n")


class Picamera2:
    def __init__(self, camera_num: int = 0):
        folder = Path(os.environ["HEMATO_FAKE_PICAMERA2_FRAMES"])
        self._images = [cv2.imread(str(p)) for p in sorted(folder.iterdir()) if p.suffix == ".png"]
        if not self._images or any(image is None for image in self._images):
            raise RuntimeError(f"fake picamera2: no readable .png frames in {folder}")
        self._count = int(os.environ.get("HEMATO_FAKE_PICAMERA2_COUNT", len(self._images)))
        self._format: str | None = None
        self._started = False
        self.delivered = 0
        _log(f"open camera {camera_num}")

    @staticmethod
    def _config(kind: str, main: dict | None = None, **kwargs) -> dict:
        main = dict(main or {})
        main.setdefault("format", "XBGR8888")  # Picamera2's default for preview configurations
        main.setdefault("size", (640, 480))
        return {"use_case": kind, "main": main, **kwargs}

    def create_preview_configuration(self, main: dict | None = None, **kwargs) -> dict:
        return self._config("preview", main, **kwargs)

    def create_still_configuration(self, main: dict | None = None, **kwargs) -> dict:
        return self._config("still", main, **kwargs)

    def create_video_configuration(self, main: dict | None = None, **kwargs) -> dict:
        return self._config("video", main, **kwargs)

    def configure(self, config: dict) -> None:
        fmt = config["main"]["format"]
        if fmt not in _FORMATS:
            raise RuntimeError(f"fake picamera2: format {fmt} not supported")
        self._format = fmt
        _log(f"configure {config['use_case']} {fmt} {tuple(config['main']['size'])}")

    def start(self) -> None:
        if self._format is None:
            raise RuntimeError("fake picamera2: start() before configure()")
        self._started = True
        _log("start")

    def capture_array(self, name: str = "main") -> np.ndarray:
        if not self._started:
            raise RuntimeError("fake picamera2: capture_array() before start()")
        if self.delivered >= self._count:  # only reached if the SIGINT below was not acted on
            raise RuntimeError("fake picamera2: no more frames")
        bgr = self._images[self.delivered % len(self._images)]
        array = _FORMATS[self._format](bgr)
        self.delivered += 1
        _log(f"frame {self.delivered} {array.shape}")
        if self.delivered == self._count:
            _log("SIGINT")
            os.kill(os.getpid(), signal.SIGINT)
        return array

    def stop(self) -> None:
        self._started = False
        _log("stop")

    def close(self) -> None:
        _log("close")
