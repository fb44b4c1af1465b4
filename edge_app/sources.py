"""Frame sources for `hemato run`: image files, a folder, a video file, an OpenCV camera, the Pi camera.

Every source yields Frame objects with a BGR image (OpenCV order) or an error saying why there is none.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from edge_app.dataset import IMAGE_SUFFIXES, images_in

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
UNREADABLE = "not a readable image"


class SourceError(RuntimeError):
    """The source cannot be opened at all (missing path, no camera driver); the message says why."""


class SourceLost(RuntimeError):
    """A live source stopped delivering frames and could not be reopened."""


@dataclass
class Frame:
    """One frame to classify: `image` is BGR uint8, or None with `error` saying why."""

    source: str
    index: int
    image: np.ndarray | None
    error: str = ""
    decode_ms: float = 0.0


def read_image(path: str | Path) -> tuple[np.ndarray | None, str]:
    """Decode an image file to BGR (unicode paths work); (None, reason) when it cannot be used."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None, UNREADABLE
    return image, ""


class ImageFiles:
    """Still images, one frame each, decoded lazily in the given order."""

    live, stream = False, False

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            start = time.perf_counter()
            image, error = read_image(path)
            yield Frame(str(path), 0, image, error, (time.perf_counter() - start) * 1000)

    def close(self) -> None:
        pass


class VideoFile:
    """Frames of a video file (frame = index in the file), every `every`-th one."""

    live, stream = False, True

    def __init__(self, path: Path, every: int = 1):
        self.path, self.every = Path(path), max(1, every)
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video {self.path}: OpenCV has no reader for it")

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            start = time.perf_counter()
            if index % self.every:
                ok, image = self._cap.grab(), None
            else:
                ok, image = self._cap.read()
            if not ok:
                return
            if image is not None:
                yield Frame(self.path.name, index, image, "", (time.perf_counter() - start) * 1000)
            index += 1

    def close(self) -> None:
        self._cap.release()


class Camera:
    """A live camera; reopened with backoff when it stops delivering, then SourceLost.

    `opener()` returns an object with read() -> (ok, bgr) and release() (cv2.VideoCapture or a fake),
    so tests can inject a camera that fails.
    """

    live, stream = True, True

    def __init__(self, name: str, opener: Callable[[], Any], every: int = 1, reopen_attempts: int = 3,
                 backoff_s: float = 0.5, stop: threading.Event | None = None):
        self.name, self.opener, self.every = name, opener, max(1, every)
        self.reopen_attempts, self.backoff_s = reopen_attempts, backoff_s
        self.stop = stop or threading.Event()
        self.reopens = 0  # reopenings that delivered frames again
        self._cap: Any = None

    def _open(self) -> Any:
        cap = self.opener()
        if cap is not None and hasattr(cap, "isOpened") and not cap.isOpened():
            cap.release()
            return None
        return cap

    def _release(self) -> None:
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:  # a dying driver may fail here too; we are replacing it anyway
                pass
        self._cap = None

    def _read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        try:
            ok, image = self._cap.read()
        except Exception:  # drivers raise instead of returning False on unplug
            return None
        return image if ok and image is not None and image.size else None

    def _recover(self) -> np.ndarray | None:
        """Reopen up to reopen_attempts times, waiting backoff_s, 2*backoff_s, ...; a frame or None."""
        for attempt in range(self.reopen_attempts):
            self._release()
            if self.stop.wait(self.backoff_s * 2 ** attempt):
                return None
            try:
                self._cap = self._open()
            except Exception:
                self._cap = None
            image = self._read()
            if image is not None:
                return image
        return None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        opened_before = False
        try:
            self._cap = self._open()
        except Exception:
            self._cap = None
        while not self.stop.is_set():
            start = time.perf_counter()
            image = self._read()
            if image is None:
                image = self._recover()
                if image is None:
                    if self.stop.is_set():
                        return
                    what = "stopped delivering frames" if opened_before else "could not be opened"
                    raise SourceLost(f"camera {self.name} {what} (tried {self.reopen_attempts} times "
                                     f"to reopen it)")
                if opened_before:
                    self.reopens += 1
            opened_before = True
            if index % self.every == 0:
                yield Frame(f"camera:{self.name}", index, image, "", (time.perf_counter() - start) * 1000)
            index += 1

    def close(self) -> None:
        self._release()


class _PicameraCapture:
    """Picamera2 behind the cv2.VideoCapture read()/release() interface, giving BGR frames."""

    def __init__(self, factory: Callable[[], Any]):
        self._cam = factory()
        # Picamera2 names formats after DRM fourccs: "BGR888" arrays are in R, G, B order.
        config = self._cam.create_preview_configuration(main={"format": "BGR888"})
        self._cam.configure(config)
        self._cam.start()

    def read(self) -> tuple[bool, np.ndarray | None]:
        rgb = self._cam.capture_array()
        if rgb is None:
            return False, None
        return True, cv2.cvtColor(np.ascontiguousarray(rgb[:, :, :3]), cv2.COLOR_RGB2BGR)

    def release(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()


def picamera_opener() -> Callable[[], Any]:
    """An opener for the Pi camera module; SourceError when picamera2 is not installed."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SourceError("the Pi camera needs picamera2: on Raspberry Pi OS  sudo apt install python3-picamera2  "
                          "(and create the virtualenv with --system-site-packages)") from exc
    return lambda: _PicameraCapture(Picamera2)


Source = ImageFiles | VideoFile | Camera


def open_source(spec: str, every: int = 1, camera_opener: Callable[[], Any] | None = None,
                reopen_attempts: int = 3, backoff_s: float = 0.5,
                stop: threading.Event | None = None) -> Source:
    """The source named on the command line: camera index, "picamera", folder, video or image file."""
    if spec.isdigit():
        opener = camera_opener or (lambda: cv2.VideoCapture(int(spec)))
        return Camera(spec, opener, every, reopen_attempts, backoff_s, stop)
    if spec == "picamera":
        return Camera("picamera", camera_opener or picamera_opener(), every, reopen_attempts, backoff_s, stop)
    path = Path(spec).expanduser()
    if path.is_dir():
        paths = images_in(path, recursive=True)
        if not paths:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return ImageFiles(paths)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return VideoFile(path, every)
        return ImageFiles([path])
    raise SourceError(f"no such file or folder: {spec} (give a folder, an image, a video, a camera index "
                      f"such as 0, or picamera)")
