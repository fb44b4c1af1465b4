"""Pick up an existing results CSV: cut what an interrupted run left half-written, check the columns,
list the sources already done, and take the last one back so it is classified again in full.

CsvWriter keeps every row on one line, so the file is repaired line by line, streaming (a long camera
run's CSV can be large).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


ADDED_COLUMNS = ("rbc_px",)  # columns a CSV from before them lacks (it cannot be resumed: rows would differ)


class CsvMismatch(ValueError):
    """The existing CSV was written with other columns (another model): appending would mix schemas."""


@dataclass
class Resume:
    """What an existing CSV holds once repaired."""

    done: set[str] = field(default_factory=set)  # sources with rows in it (not counting `redo`)
    rows: int = 0            # data rows kept
    cut_bytes: int = 0       # a half-written row (or damaged tail) removed
    redo: str = ""           # the last source, whose rows were removed so that it is classified again
    redo_rows: int = 0


def _fields(line: bytes) -> list[str] | None:
    """The fields of one CSV line, or None when it is damaged (NUL bytes, bad UTF-8, bad quoting)."""
    if b"\0" in line:
        return None
    try:
        text = line.decode("utf-8").rstrip("\r\n")
        return text.split(",") if '"' not in text else next(csv.reader([text]), [])
    except (UnicodeDecodeError, csv.Error):
        return None


def _mismatch(path: str | Path, found: list[str] | None, columns: list[str]) -> str:
    """Why the CSV's header cannot be appended to, and what to do."""
    advice = "pass --overwrite to replace it, or another --csv"
    if found == [c for c in columns if c not in ADDED_COLUMNS]:
        return (f"{path} was written by an earlier version of hemato run, without the column "
                f"{', '.join(ADDED_COLUMNS)} (the red-cell scale of each frame); {advice}")
    classes = [c[2:] for c in columns if c.startswith("p_")]
    return f"{path} has other columns than this model writes (classes {', '.join(classes)}); {advice}"


def resume_csv(path: str | Path, columns: list[str], redo: Callable[[str], bool] = lambda name: False
               ) -> Resume | None:
    """Make an existing CSV safe to append to; None when it has no complete header (start it afresh).

    Raises CsvMismatch when its header is not `columns`. When `redo(last_source)` is true, the rows of the
    last source are removed: the run that wrote them may have stopped before its last row.
    """
    with open(path, "rb+") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            # a header cut short by a crash (or an empty file) is started afresh; any other file is not ours
            if not ",".join(columns).encode().startswith(header.rstrip(b"\r")):
                raise CsvMismatch(f"{path} is not a results CSV of hemato run (its first line is not one); "
                                  "pass another --csv, or --overwrite to replace that file")
            f.truncate(0)
            return None
        found = _fields(header)
        if found != columns:
            raise CsvMismatch(_mismatch(path, found, columns))
        state = Resume()
        offset = good_end = block_start = len(header)
        block_source, block_rows = None, 0
        for line in f:
            start, offset = offset, offset + len(line)
            row = _fields(line) if line.endswith(b"\n") else None
            if row is None or len(row) != len(columns):
                continue  # damaged: cut below when nothing good follows it
            if row[0] != block_source:
                block_start, block_source, block_rows = start, row[0], 0
            block_rows += 1
            state.done.add(row[0])
            state.rows += 1
            good_end = offset
        state.cut_bytes = offset - good_end
        end = good_end
        if block_source is not None and redo(block_source):
            end, state.redo, state.redo_rows = block_start, block_source, block_rows
            state.done.discard(block_source)
            state.rows -= block_rows
        if end < offset:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return state
