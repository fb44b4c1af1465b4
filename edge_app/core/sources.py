"""Frame sources: image files, a folder, a video file, an OpenCV camera, the Pi camera.

Every source yields Frame objects with a BGR image (OpenCV order) or an error saying why there is none.
Sources also say which CSV `source` names they produce (covers) and can leave out names already done (skip),
so that a run can resume a CSV.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from edge_app.core.dataset import IMAGE_SUFFIXES, images_in
from edge_app.core.frames import VANISHED, Frame, image_frame, read_image, utf8_text

__all__ = ["Camera", "Frame", "ImageFiles", "Source", "SourceError", "SourceLost", "VideoFile", "is_camera",
           "open_source", "path_key", "read_image"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")


class SourceError(RuntimeError):
    """The source cannot be opened at all (missing path, no camera driver); the message says why."""


class SourceLost(RuntimeError):
    """A live source stopped delivering frames and could not be reopened."""


def path_key(name: str | Path) -> str:
    """A file's name as compared with a CSV's sources: absolute and normalised, so that `in/a.jpg` and
    `/home/lab/in/a.jpg` (from the same folder) are one image however the folder was typed."""
    return utf8_text(os.path.abspath(name))


class ImageFiles:
    """Still images, one frame each, decoded lazily in the given order."""

    live, stream = False, False

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self._keys = {path_key(path) for path in self.paths}

    def covers(self, name: str) -> bool:
        return path_key(name) in self._keys

    owns = covers  # a CSV row's source is one of these images: its differential counts only those

    def skip(self, done: set[str]) -> int:
        """Leave out images whose rows are already in the CSV; how many were left out."""
        keys = {path_key(name) for name in done}
        before = len(self.paths)
        self.paths = [path for path in self.paths if path_key(path) not in keys]
        return before - len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            try:
                yield image_frame(path)
            except FileNotFoundError:
                yield Frame(utf8_text(path), 0, None, VANISHED)

    def faults(self) -> str:
        return ""

    def close(self) -> None:
        pass


class VideoFile:
    """Frames of a video file (frame = index in the file), every `every`-th one."""

    live, stream = False, True

    def __init__(self, path: Path, every: int = 1):
        self.path, self.every = Path(path), max(1, every)
        self.source = utf8_text(self.path.name)  # the CSV's `source` of its frames
        self.skipped = False
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video {self.path}: OpenCV has no reader for it")
        self.expected = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # from the header; 0: not given
        self.frames = 0  # frames read (or skipped by --every)
        self.ended = False  # the file gave no more frames (not a run stopped early)

    def covers(self, name: str) -> bool:
        return name == self.source

    owns = covers

    def skip(self, done: set[str]) -> int:
        """Leave the whole video out when its rows are already in the CSV; 1 if so."""
        self.skipped = self.source in done
        return int(self.skipped)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self.skipped:
            start = time.perf_counter()
            if index % self.every:
                ok, image = self._cap.grab(), None
            else:
                ok, image = self._cap.read()
            if not ok:
                self.ended = True
                return
            self.frames = index + 1
            if image is not None:
                yield Frame(self.source, index, image, "", (time.perf_counter() - start) * 1000)
            index += 1

    def faults(self) -> str:
        """A note when the file ended well before the frame count its header gives (a damaged or cut file)."""
        if not self.ended or not self.expected or self.frames >= self.expected - 1:
            return ""
        return f"{self.source} ended after {self.frames} of the {self.expected} frames its header gives (damaged?)"

    def close(self) -> None:
        self._cap.release()


class Camera:
    """A live camera: failed reads are retried, then the camera is reopened with backoff, then SourceLost.

    `opener()` returns an object with read() -> (ok, bgr) and release() (cv2.VideoCapture or a fake),
    so tests can inject a camera that fails.
    """

    live, stream = True, True

    def __init__(self, name: str, opener: Callable[[], Any], every: int = 1, reopen_attempts: int = 3,
                 backoff_s: float = 0.5, stop: threading.Event | None = None, read_retries: int = 3,
                 retry_wait_s: float = 0.1):
        self.name, self.opener, self.every = name, opener, max(1, every)
        self.reopen_attempts, self.backoff_s = reopen_attempts, backoff_s
        self.read_retries, self.retry_wait_s = read_retries, retry_wait_s
        self.stop = stop or threading.Event()
        self.reopens = 0  # reopenings that delivered frames again
        self.failed_reads = 0  # reads that gave no frame while the camera was open
        self._cap: Any = None

    def covers(self, name: str) -> bool:
        return False  # camera frames cannot be taken again: a resumed CSV is appended to

    def owns(self, name: str) -> bool:
        return True  # earlier sessions' frames cannot be told apart: the whole CSV is the camera's

    def skip(self, done: set[str]) -> int:
        return 0

    def _open(self) -> Any:
        try:
            cap = self.opener()
        except Exception:  # a driver that raises is a camera that did not open
            return None
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

    def _read_once(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        try:
            ok, image = self._cap.read()
        except Exception:  # drivers raise instead of returning False on unplug
            ok, image = False, None
        if ok and image is not None and image.size:
            return image
        self.failed_reads += 1
        return None

    def _read(self) -> np.ndarray | None:
        """A frame, retrying a failed read up to read_retries times, retry_wait_s apart; None if all fail."""
        image = self._read_once()
        for _ in range(self.read_retries):
            if image is not None or self._cap is None or self.stop.wait(self.retry_wait_s):
                break
            image = self._read_once()
        return image

    def _recover(self) -> np.ndarray | None:
        """Reopen up to reopen_attempts times, waiting backoff_s, 2*backoff_s, ...; a frame or None."""
        for attempt in range(self.reopen_attempts):
            self._release()
            if self.stop.wait(self.backoff_s * 2 ** attempt):
                return None
            self._cap = self._open()
            image = self._read()
            if image is not None:
                return image
        return None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        opened_before = False
        self._cap = self._open()
        while not self.stop.is_set():
            start = time.perf_counter()
            image = self._read()
            if image is None:
                image = self._recover()
                if image is None:
                    if self.stop.is_set():
                        return
                    what = "stopped delivering frames" if opened_before else "could not be opened"
                    raise SourceLost(f"camera {self.name} {what} (reads retried {self.read_retries} times, "
                                     f"then reopened {self.reopen_attempts} times with backoff)")
                if opened_before:
                    self.reopens += 1
            opened_before = True
            if index % self.every == 0:
                yield Frame(f"camera:{self.name}", index, image, "", (time.perf_counter() - start) * 1000)
            index += 1

    def faults(self) -> str:
        """What went wrong with the camera during the run, for the summary ("" when nothing did)."""
        if not (self.failed_reads or self.reopens):
            return ""
        return f"camera {self.name}: {self.failed_reads} failed reads, reopened {self.reopens} times"

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


def is_camera(spec: str) -> bool:
    """Whether a source named on the command line is a camera (an OpenCV index, or picamera) rather than files."""
    return spec.isdigit() or spec == "picamera"


def open_source(spec: str, every: int = 1, camera_opener: Callable[[], Any] | None = None,
                reopen_attempts: int = 3, backoff_s: float = 0.5, stop: threading.Event | None = None,
                read_retries: int = 3, retry_wait_s: float = 0.1) -> Source:
    """The source named on the command line: camera index, "picamera", folder, video or image."""
    camera = dict(every=every, reopen_attempts=reopen_attempts, backoff_s=backoff_s, stop=stop,
                  read_retries=read_retries, retry_wait_s=retry_wait_s)
    path = Path(spec).expanduser()
    if is_camera(spec):
        if camera_opener is None:
            camera_opener = picamera_opener() if spec == "picamera" else (lambda: cv2.VideoCapture(int(spec)))
        return Camera(spec, camera_opener, **camera)
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

