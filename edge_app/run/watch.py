"""`hemato run FOLDER --watch`: classify each new image once, when it is completely written, until stopped."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from edge_app.core.dataset import IMAGE_SUFFIXES, images_in
from edge_app.core.frames import Frame, image_frame
from edge_app.core.sources import path_key


def _stderr_note(message: str) -> None:
    print(f"hemato run: {message}", file=sys.stderr)


class WatchFolder:
    """New image files in a folder (searched recursively, polled), each yielded once, until `stop` is set.

    A file is complete when its size and modification time stayed the same for settle_s seconds and did
    not change while it was read. Files that vanish before they are read are skipped with a note.
    """

    live, stream = False, True

    def __init__(self, folder: Path, poll_s: float = 1.0, settle_s: float = 2.0,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 note: Callable[[str], None] = _stderr_note):
        self.folder, self.poll_s, self.settle_s = Path(folder), poll_s, settle_s
        self.stop = stop or threading.Event()
        self.clock, self.note = clock, note
        self.done: set[str] = set()   # path_key of files yielded (or already in the CSV): never read again
        self.vanished = 0
        self._pending: dict[str, tuple[tuple[int, int], float]] = {}  # file -> (size, mtime), unchanged since
        self._missing = False

    def owns(self, name: str) -> bool:
        """Whether a CSV row's source is an image of this folder, still there or moved away since."""
        path = Path(path_key(name))
        return path.suffix.lower() in IMAGE_SUFFIXES and Path(path_key(self.folder)) in path.parents

    def covers(self, name: str) -> bool:
        return self.owns(name) and Path(path_key(name)).is_file()

    def skip(self, done: set[str]) -> int:
        """Never read files whose rows are already in the CSV; how many of the folder's files that is."""
        self.done |= {path_key(name) for name in done}
        try:
            return sum(path_key(path) in self.done for path in images_in(self.folder, recursive=True))
        except OSError:
            return 0

    def _signature(self, path: Path) -> tuple[int, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def _list(self) -> list[Path]:
        try:
            paths = images_in(self.folder, recursive=True)
        except OSError:  # a subfolder vanished while listing, or the folder itself is gone: try again later
            paths = []
        missing = not self.folder.is_dir()
        if missing and not self._missing:
            self.note(f"the watched folder {self.folder} is gone; waiting for it to come back")
        self._missing = missing
        return paths

    def _ready(self) -> list[Path]:
        """Files not yet read whose size and mtime have been unchanged for settle_s seconds."""
        now, pending, ready = self.clock(), {}, []
        for path in self._list():
            key = str(path)
            signature = self._signature(path)
            if path_key(path) in self.done or signature is None:
                continue
            seen = self._pending.get(key)
            since = seen[1] if seen is not None and seen[0] == signature else now
            pending[key] = (signature, since)
            if now - since >= self.settle_s:
                ready.append(path)
        self._pending = pending
        return ready

    def _read(self, path: Path) -> Frame | None:
        """The file as a Frame; None when it vanished or changed while being read (then it is retried)."""
        key = str(path)
        before = self._pending.get(key, (None, 0.0))[0]
        try:
            frame = image_frame(path)
        except FileNotFoundError:
            frame = None
        after = self._signature(path)
        if after is None:
            self.vanished += 1
            self._pending.pop(key, None)
            self.note(f"{path} vanished before it was read; skipped")
            return None
        if frame is None or after != before:  # still being written (or replaced): wait for it to settle again
            self._pending[key] = (after, self.clock())
            return None
        self.done.add(path_key(path))
        self._pending.pop(key, None)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while not self.stop.is_set():
            for path in self._ready():
                if self.stop.is_set():
                    return
                frame = self._read(path)
                if frame is not None:
                    yield frame
            self.stop.wait(self.poll_s)

    def faults(self) -> str:
        """What went wrong while watching, for the summary ("" when nothing did)."""
        return f"{self.vanished} files vanished before they were read" if self.vanished else ""

    def close(self) -> None:
        pass
