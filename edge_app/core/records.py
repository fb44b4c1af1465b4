"""One located cell as a row: the columns and number formats of `hemato run`'s CSV, also the web viewer's."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from edge_app.core.pipeline import UNCERTAIN, CellResult
from edge_app.core.vision import Box

# label: the answer (a class or UNCERTAIN); predicted/confidence: the most probable class; runner_up: the
# second most probable class (what a reviewer checks next); reason: why the answer is UNCERTAIN, empty otherwise;
# rbc_px: the frame's red-cell diameter (source pixels) its crops were scaled by, empty where the frame had too
# few red cells (or the model no scale) and the crop is relative to the nucleus.
BASE_COLUMNS = ["source", "frame", "cell", "label", "predicted", "confidence", "runner_up", "reason", "rbc_px",
                "x0", "y0", "x1", "y1", "latency_ms", "error"]


BOX_COLUMNS = ("x0", "y0", "x1", "y1")
CELL_COLUMNS = {"source", "label", *BOX_COLUMNS}  # what a reader of the CSV's cells needs
REVIEWED = {"1", "yes", "true", "y", "reviewed"}  # values of a review export's 'reviewed' column meaning yes


def csv_columns(labels: list[str]) -> list[str]:
    """The CSV header: the fixed columns, then p_<LABEL> per class in model order."""
    return BASE_COLUMNS + [f"p_{label}" for label in labels]


def cell_record(source: str, frame: int, index: int, cell: CellResult, labels: list[str],
                latency_ms: float, rbc_px: float | None = None) -> dict[str, Any]:
    """One located cell as a row (the CSV's columns, probabilities as a dict): shared by run and the web viewer."""
    b = cell.box
    return {"source": source, "frame": frame, "cell": index, "label": cell.label, "predicted": cell.predicted,
            "confidence": float(cell.confidence), "runner_up": labels[cell.runner_up], "reason": cell.flag,
            "rbc_px": None if rbc_px is None else round(float(rbc_px), 1),
            "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1, "latency_ms": float(latency_ms), "error": "",
            "probabilities": {label: float(p) for label, p in zip(labels, cell.probabilities)}}


def spreadsheet_safe(value: Any) -> Any:
    """A text value that a spreadsheet would run as a formula (=, +, -, @ first), quoted; anything else as it is."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


def _number(value: Any, digits: int) -> str:
    """A number with `digits` decimals (also one read back from a CSV as text); empty where it is unknown."""
    return "" if value is None or value == "" else f"{float(value):.{digits}f}"


def csv_values(record: dict[str, Any], labels: list[str]) -> list[Any]:
    """A record (cell_record's, or a CSV row read back with its probabilities as a dict) as CSV values in
    csv_columns order: 4 decimals for probabilities and confidence, 2 for the latency, 1 for rbc_px; a value
    the record lacks stays empty."""
    fixed = [record.get(c, "") for c in BASE_COLUMNS]
    for column, digits in (("confidence", 4), ("latency_ms", 2), ("rbc_px", 1)):
        fixed[BASE_COLUMNS.index(column)] = _number(record.get(column), digits)
    probabilities = record.get("probabilities") or {}
    return fixed + [_number(probabilities.get(label), 4) for label in labels]


def differential(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Counts per class; percent: of the answered cells (UNCERTAIN left out, as in run); percent_of_all: of every
    located cell, UNCERTAIN included (uncertain_percent is UNCERTAIN's share)."""
    counts = dict.fromkeys(labels + [UNCERTAIN], 0)
    for row in rows:
        if not row["error"] and row["label"] in counts:
            counts[row["label"]] += 1
    certain = sum(counts[label] for label in labels)
    total = certain + counts[UNCERTAIN]

    def share(n: int, of: int) -> float:
        return round(100 * n / of, 1) if of else 0.0

    classes = [{"label": label, "count": counts[label], "percent": share(counts[label], certain),
                "percent_of_all": share(counts[label], total)} for label in labels]
    return {"total": total, "certain": certain, "uncertain": counts[UNCERTAIN],
            "uncertain_percent": share(counts[UNCERTAIN], total), "classes": classes}


def is_reviewed(row: dict[str, Any]) -> bool:
    """Whether a review export's row was confirmed or reclassified by a person."""
    return (row.get("reviewed") or "").strip().lower() in REVIEWED


def read_rows(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """A results CSV's rows (`hemato run`'s or a review export) and its header's columns; ValueError naming the
    file when it is not text (an image or a model given by mistake)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader), list(reader.fieldnames or [])
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text CSV (not UTF-8)") from None


def row_box(row: dict[str, str]) -> Box:
    """The cell's box in a CSV row (source-image pixels); ValueError naming the row's source and the column when
    a value is not a finite number (a hand-edited CSV)."""
    values = []
    for k in BOX_COLUMNS:
        try:
            values.append(round(float(row.get(k) or "")))
        except (ValueError, OverflowError):
            raise ValueError(f"{row.get('source', '')}: its box's {k} is {row.get(k)!r}, not a number of "
                             "pixels") from None
    return Box(*values, 0)


def row_image(source: str, csv_path: Path) -> Path:
    """The image a row's source names: absolute or found from here as written, else relative to the CSV's folder
    (the leading quote that guards a spreadsheet formula removed)."""
    path = Path(source.lstrip("'")).expanduser()
    return path if path.is_absolute() or path.exists() else Path(csv_path).parent / path
