"""The review page's cells: every cell of the session with the crop the model saw, confirmed or reclassified by a
person; exported as what `hemato adapt` reads (CSV, zip of class folders) and as the printable report.

Cells come from uploads (kept in memory, per browser session, bounded) or from a `hemato run` CSV the operator
names at server start (`hemato serve --review results.csv`): its images are read from the device's own disk
then, never from a path a browser sends.
"""
from __future__ import annotations

import csv
import io
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.core.frames import as_bgr
from edge_app.core.image_decode import ImageError, load_image
from edge_app.core.overlay import rgb_jpeg
from edge_app.core.pipeline import UNCERTAIN
from edge_app.core.records import (CELL_COLUMNS, csv_columns, csv_values, differential, is_reviewed, read_rows,
                                   row_box, row_image, spreadsheet_safe)
from edge_app.core.vision import crop_for_model
from edge_app.report.report import ReportCell, ReportInput, render

MAX_REVIEW_CELLS = 5000  # uploaded cells kept with their crops, all sessions together (oldest dropped)
REVIEW_COLUMNS_EXTRA = ["model_label", "reviewed"]


@dataclass
class ReviewCell:
    id: int
    owner: str | None  # the browser session that uploaded it; None: loaded by the operator (--review)
    row: dict[str, Any]  # the cell's record (edge_app.core.records.cell_record, rounded)
    jpeg: bytes          # the model's input crop
    label: str           # the current label: the model's answer until a person sets it
    reviewed: bool = False

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.row["source"], "label": self.label, "model_label": self.row["label"],
                "predicted": self.row["predicted"], "confidence": self.row["confidence"],
                "reason": self.row.get("reason", ""), "reviewed": self.reviewed}


class ReviewStore:
    """Cells with crops and reviews, shared by the routes behind a lock."""

    def __init__(self) -> None:
        self._cells: OrderedDict[int, ReviewCell] = OrderedDict()
        self._next = 1
        self._lock = threading.Lock()
        self.loaded_from: str | None = None

    def add(self, owner: str | None, row: dict[str, Any], jpeg: bytes) -> int:
        with self._lock:
            ident, self._next = self._next, self._next + 1
            self._cells[ident] = ReviewCell(ident, owner, row, jpeg, row["label"])
            uploaded = [k for k, c in self._cells.items() if c.owner is not None]
            for k in uploaded[:max(0, len(uploaded) - MAX_REVIEW_CELLS)]:
                del self._cells[k]
            return ident

    def cells(self, sid: str | None) -> list[ReviewCell]:
        with self._lock:
            return [c for c in self._cells.values() if c.owner is None or (sid and c.owner == sid)]

    def get(self, sid: str | None, ident: int) -> ReviewCell | None:
        with self._lock:
            cell = self._cells.get(ident)
        return cell if cell is not None and (cell.owner is None or (sid and cell.owner == sid)) else None

    def set_label(self, sid: str | None, ident: int, label: str) -> ReviewCell | None:
        cell = self.get(sid, ident)
        if cell is not None:
            with self._lock:
                cell.label, cell.reviewed = label, True
        return cell

    def reset(self, sid: str | None) -> None:
        with self._lock:
            for k in [k for k, c in self._cells.items() if sid and c.owner == sid]:
                del self._cells[k]

    def load_csv(self, path: Path, input_size: int) -> list[str]:
        """Add every cell of a `hemato run` CSV, cut from its images on this machine; notes on what was skipped."""
        path = Path(path)
        rows, columns = read_rows(path)
        if rows and not CELL_COLUMNS <= set(columns):
            raise ValueError(f"{path}: not a hemato run CSV")
        notes, by_source = [], OrderedDict()
        for row in rows:
            if not row.get("error"):
                by_source.setdefault(row["source"], []).append(row)
        for source, source_rows in by_source.items():
            image = row_image(source, path)
            if any(int(r.get("frame") or 0) for r in source_rows):
                notes.append(f"{source}: video frames are not reviewed")
                continue
            try:
                decoded = load_image(image)
            except (ImageError, OSError) as exc:
                notes.append(f"{source}: {exc}")
                continue
            bgr = as_bgr(decoded.image)
            for r in source_rows:
                try:
                    box = row_box(r).divided_by(decoded.scale)
                except ValueError as exc:
                    notes.append(str(exc))
                    continue
                record = {**r, "source": str(image), "confidence": float(r.get("confidence") or 0),
                          "probabilities": {k[2:]: float(v) for k, v in r.items() if k.startswith("p_") and v}}
                ident = self.add(None, record, rgb_jpeg(crop_for_model(bgr, box, input_size)))
                if is_reviewed(r):
                    self.set_label(None, ident, r["label"])
                    record["label"] = r.get("model_label") or r["label"]
        self.loaded_from = str(path)
        return notes


def counts(cells: list[ReviewCell], labels: list[str]) -> dict[str, Any]:
    """The differential of the current labels, with how many cells a person reviewed and changed."""
    diff = differential([{"label": c.label, "error": ""} for c in cells], labels)
    diff["reviewed"] = sum(c.reviewed for c in cells)
    diff["reclassified"] = sum(c.reviewed and c.label != c.row["label"] for c in cells)
    return diff


def export_csv(cells: list[ReviewCell], labels: list[str]) -> str:
    """The cells as `hemato run` rows (label: the reviewed label) plus model_label and reviewed: what
    `hemato adapt` and `hemato report` read."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(csv_columns(labels) + REVIEW_COLUMNS_EXTRA)
    for c in cells:
        row = {**c.row, "label": c.label, "source": spreadsheet_safe(str(c.row["source"]))}
        writer.writerow(csv_values(row, labels) + [c.row["label"], "yes" if c.reviewed else ""])
    return out.getvalue()


def _safe_name(text: str) -> str:
    stem = text.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:60] or "cell"


def export_zip(cells: list[ReviewCell]) -> bytes:
    """CELLS/<CLASS>/<n>_<source>.crop.jpg for every reviewed cell: `hemato adapt` reads the crops as they are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for c in cells:
            if c.reviewed and c.label != UNCERTAIN:
                archive.writestr(f"cells/{c.label}/{c.id:05d}_{_safe_name(c.row['source'])}.crop.jpg", c.jpeg)
    return buffer.getvalue()


def session_report(cells: list[ReviewCell], labels: list[str], sample: str, model_file: str,
                   model_meta: dict[str, Any]) -> str:
    """The printable report of the review page's cells (reviews applied)."""
    thumbs = [ReportCell(c.row["source"], c.label, c.row["label"], float(c.row["confidence"]), c.reviewed, c.jpeg)
              for c in cells]
    return render(ReportInput(sample, model_file, model_meta, labels, thumbs))
