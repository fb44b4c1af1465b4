"""The sources of `hemato run`: the core's (edge_app.core.sources), and a watched folder."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from edge_app.core.sources import Source as CoreSource
from edge_app.core.sources import SourceError
from edge_app.core.sources import open_source as open_core_source
from edge_app.run.watch import WatchFolder

Source = CoreSource | WatchFolder


def open_source(spec: str, every: int = 1, camera_opener: Callable[[], Any] | None = None,
                reopen_attempts: int = 3, backoff_s: float = 0.5, stop: threading.Event | None = None,
                read_retries: int = 3, retry_wait_s: float = 0.1, watch: bool = False, poll_s: float = 1.0,
                settle_s: float = 2.0) -> Source:
    """The core's source for `spec`, or with watch a WatchFolder on that folder."""
    if watch:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise SourceError(f"--watch needs a folder: {spec} is not one")
        return WatchFolder(path, poll_s, settle_s, stop)
    return open_core_source(spec, every, camera_opener, reopen_attempts, backoff_s, stop, read_retries, retry_wait_s)
