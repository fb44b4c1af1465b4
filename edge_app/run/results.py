"""The results of a run: one CSV row per cell, written as it is produced, and the end-of-run summary."""
from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from edge_app.core.frames import utf8_text
from edge_app.core.pipeline import FRAME_STAGES, UNCERTAIN, CellResult
from edge_app.core.records import BASE_COLUMNS, cell_record, csv_columns, csv_values
from edge_app.core.wording import uncertain_meaning

STAGES = ("decode", *FRAME_STAGES, "write")  # a frame's stages in `hemato run`
LATENCY_STAGES = STAGES[:-1]  # a frame's latency: decode..invoke
MAX_FAILURES_LISTED = 20   # in the printed summary
MAX_FAILURES_KEPT = 1000   # in memory and the JSON summary (a long run keeps counting past it)
MAX_SAMPLES = 100_000      # latest latencies kept for the p95; means cover every frame


def one_line(text: str) -> str:
    """Text with CR/LF written as \\r/\\n, so that every CSV row is exactly one line (repairable line-wise), and
    valid UTF-8 (frames.utf8_text)."""
    return utf8_text(text).replace("\r", "\\r").replace("\n", "\\n")


class CsvWriter:
    """Writes the header once (or appends to a resumed CSV), then each row as one flushed write, so that a
    power cut loses at most the row in progress."""

    def __init__(self, path: str | Path, labels: list[str], fsync: bool = False, append: bool = False):
        self.path, self.labels, self.fsync = Path(path), list(labels), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self._line = io.StringIO()
        self._csv = csv.writer(self._line)
        if not append:
            self._put(csv_columns(self.labels))

    def _put(self, row: list[Any]) -> None:
        self._line.seek(0)
        self._line.truncate()
        self._csv.writerow(row)
        self._file.write(self._line.getvalue())
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def write_cell(self, source: str, frame: int, index: int, cell: CellResult, latency_ms: float,
                   rbc_px: float | None = None) -> None:
        self._put(csv_values(cell_record(one_line(source), frame, index, cell, self.labels, latency_ms, rbc_px),
                             self.labels))

    def write_error(self, source: str, frame: int, error: str) -> None:
        row = dict.fromkeys(BASE_COLUMNS, "") | {"source": one_line(source), "frame": frame, "error": one_line(error)}
        self._put([row[c] for c in BASE_COLUMNS] + [""] * len(self.labels))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class Series:
    """A timing over a run: count and mean of every value, the p95 of the latest MAX_SAMPLES (bounded memory)."""

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.recent: deque[float] = deque(maxlen=MAX_SAMPLES)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def p95(self) -> float:
        return float(np.percentile(self.recent, 95)) if self.recent else 0.0


@dataclass
class RunStats:
    """Counts and timings of a run, for the summary printed at the end; memory stays bounded on long runs."""

    labels: list[str]
    images: int = 0                 # frames decoded (failures are counted in `failed`)
    no_cell: int = 0                # decoded frames where no white blood cell was found
    cells: dict[str, int] = field(default_factory=dict)  # answer (a class or UNCERTAIN) -> count
    uncertain_guess: dict[str, int] = field(default_factory=dict)  # predicted class of UNCERTAIN cells -> count
    failed: int = 0                 # frames that could not be used
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, why), the first MAX_FAILURES_KEPT
    latency_ms: Series = field(default_factory=Series)  # decode..invoke per decoded frame
    stages_ms: dict[str, Series] = field(default_factory=lambda: {s: Series() for s in STAGES})
    elapsed_s: float = 0.0
    stopped: str = ""               # why the run ended early ("" when it ran to the end)
    notes: list[str] = field(default_factory=list)  # resumed CSV, camera faults, vanished files (printed on stderr)
    model_rbc_px: float | None = None  # the model's red-cell scale (None: it crops relative to the nucleus)
    rbc_given: bool = False            # the diameter came from --rbc-diameter, not from each frame
    rbc_px: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))  # per scaled frame
    unscaled: int = 0                  # decoded frames with too few red cells to measure (nucleus-relative crop)
    threshold: float = 0.0          # the confidence below which a cell was answered UNCERTAIN
    colour_guard: bool = False      # whether unusual colours also made cells UNCERTAIN

    def add_cell(self, label: str, predicted: str) -> None:
        """Count one cell's answer (a class or UNCERTAIN) and, for UNCERTAIN, its best guess."""
        self.cells[label] = self.cells.get(label, 0) + 1
        if label == UNCERTAIN:
            self.uncertain_guess[predicted] = self.uncertain_guess.get(predicted, 0) + 1

    def add_frame(self, cells: list[CellResult], timings_ms: dict[str, float], rbc_px: float | None = None) -> None:
        self.images += 1
        if rbc_px is None:
            self.unscaled += 1
        else:
            self.rbc_px.append(rbc_px)
        if not cells:
            self.no_cell += 1
        for cell in cells:
            self.add_cell(cell.label, cell.predicted)
        for stage, ms in timings_ms.items():
            self.stages_ms.setdefault(stage, Series()).add(ms)
        self.latency_ms.add(sum(timings_ms.get(s, 0.0) for s in LATENCY_STAGES))

    def add_failure(self, source: str, error: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((source, error))

    @property
    def classified(self) -> int:
        return sum(self.cells.values())

    def differential(self) -> list[tuple[str, int, float]]:
        """(class, count, percent of the confidently classified cells), in model order."""
        certain = self.classified - self.cells.get(UNCERTAIN, 0)
        return [(label, self.cells.get(label, 0), 100.0 * self.cells.get(label, 0) / certain if certain else 0.0)
                for label in self.labels]

    def red_cell_scale(self) -> dict[str, Any]:
        """What the run assumed about the camera's scale: red-cell diameters (source pixels) over the frames."""
        out: dict[str, Any] = {"model_px": self.model_rbc_px, "given": self.rbc_given,
                               "frames_scaled": len(self.rbc_px) if self.model_rbc_px else 0,
                               "frames_unscaled": self.unscaled if self.model_rbc_px else self.images}
        if self.model_rbc_px and self.rbc_px:
            p25, p50, p75 = np.percentile(self.rbc_px, [25, 50, 75])
            out |= {"median_px": round(float(p50), 2), "p25_px": round(float(p25), 2), "p75_px": round(float(p75), 2)}
        return out

    def _scale_line(self) -> str:
        if not self.model_rbc_px:
            return ("Red-cell scale: the model carries none; crops are relative to the nucleus"
                    + (" (--rbc-diameter ignored)" if self.rbc_given else ""))
        scale = self.red_cell_scale()
        if not self.rbc_px:
            return (f"Red-cell scale: no frame had enough red cells to measure; crops are relative to the nucleus "
                    f"(model: {self.model_rbc_px:.1f} px)")
        if self.rbc_given:
            measured = f"given {scale['median_px']:.1f} px (--rbc-diameter)"
        else:
            measured = (f"median {scale['median_px']:.1f} px (IQR {scale['p25_px']:.1f}-{scale['p75_px']:.1f}) "
                        f"over {scale['frames_scaled']} frames")
        fell_back = f"; {self.unscaled} frames had too few red cells (nucleus-relative crop)" if self.unscaled else ""
        return f"Red-cell diameter: {measured}, scaled to the model's {self.model_rbc_px:.1f} px{fell_back}"

    def _differential_dict(self) -> dict[str, dict[str, float]]:
        return {label: {"count": n, "percent": round(pct, 2)} for label, n, pct in self.differential()}

    def to_dict(self, counts_only: bool = False) -> dict[str, Any]:
        """The summary as JSON-ready data; counts_only: the cells and the differential alone."""
        if counts_only:
            return {"images_with_cells": self.images, "images_failed": self.failed,
                    "cells_classified": self.classified, "uncertain": self.cells.get(UNCERTAIN, 0),
                    "differential": self._differential_dict()}
        return {
            "images_read": self.images + self.failed, "images_decoded": self.images,
            "images_failed": self.failed, "images_without_cell": self.no_cell,
            "cells_classified": self.classified, "uncertain": self.cells.get(UNCERTAIN, 0),
            "uncertain_best_guess": {label: self.uncertain_guess.get(label, 0) for label in self.labels},
            "differential": self._differential_dict(),
            "failures": [{"source": s, "error": e} for s, e in self.failures],
            "latency_ms": {"mean": round(self.latency_ms.mean, 3), "p95": round(self.latency_ms.p95, 3)},
            "stage_mean_ms": {s: round(v.mean, 3) for s, v in self.stages_ms.items()},
            "red_cell_scale": self.red_cell_scale(),
            "elapsed_s": round(self.elapsed_s, 3), "stopped": self.stopped, "notes": self.notes,
        }

    def differential_lines(self, title: str = "Differential count") -> list[str]:
        """The differential: one line per class with count and percent of the answered cells, then UNCERTAIN."""
        uncertain = self.cells.get(UNCERTAIN, 0)
        certain = self.classified - uncertain
        lines = [f"{title} ({certain} cells" + (f"; {uncertain} UNCERTAIN not counted):" if uncertain else "):")]
        width = max(len(label) for label in self.labels + [UNCERTAIN])
        for label, n, pct in self.differential():
            guess = f"   (UNCERTAIN, best guess {label}: {self.uncertain_guess.get(label, 0)})" if uncertain else ""
            lines.append(f"  {label:<{width}} {n:6d}  {pct:5.1f}%{guess}")
        if uncertain:
            lines.append(f"  {UNCERTAIN:<{width}} {uncertain:6d}")
        return lines

    def format(self, whole: "RunStats | None" = None, earlier_rows: int = 0, csv_name: str = "",
               other_rows: int = 0) -> str:
        """The human-readable summary: counts, differential, what UNCERTAIN means, failures, latency.

        whole: the counts of this source's rows in the CSV when this run resumed one (earlier_rows of its rows
        were there before); the differential is then those rows', which is what "the differential of this
        folder" means. other_rows: rows of other sources in the CSV, not counted (another sample's).
        """
        failed = self.failed
        lines = [f"Images read: {self.images + failed}  ({failed} failed, {self.no_cell} with no cell found)",
                 f"Cells classified: {self.classified}"]
        if whole is not None:
            others = f", {other_rows} of them of other images, which are not counted" if other_rows else ""
            rows, title = (("this source's rows in it", "this source in the CSV") if other_rows
                           else ("the whole CSV", "the whole CSV"))
            lines.append(f"{csv_name or 'The CSV'} was resumed: {earlier_rows} of its rows are from earlier runs"
                         f"{others}; the differential below is of {rows} ({whole.classified} cells)")
            lines += whole.differential_lines(f"Differential count of {title}")
        else:
            lines += self.differential_lines()
        counted = whole or self
        if counted.cells.get(UNCERTAIN, 0) or self.threshold or self.colour_guard:
            lines += textwrap.wrap(uncertain_meaning(self.threshold, self.colour_guard), 100)
        if failed:
            lines.append(f"Failed images ({failed}):")
            lines += [f"  {source}: {error}" for source, error in self.failures[:MAX_FAILURES_LISTED]]
            if failed > MAX_FAILURES_LISTED:
                lines.append(f"  ... and {failed - MAX_FAILURES_LISTED} more (see the error column of the CSV)")
        if self.images:
            lines.append(self._scale_line())
        if self.latency_ms:
            stages = ", ".join(f"{s} {v.mean:.1f}" for s, v in self.stages_ms.items() if v)
            lines.append(f"Latency per image: mean {self.latency_ms.mean:.1f} ms, p95 {self.latency_ms.p95:.1f} ms "
                         f"(stage means, ms: {stages})")
        if self.elapsed_s and self.images:
            lines.append(f"Throughput: {self.images / self.elapsed_s:.1f} images/s over {self.elapsed_s:.1f} s")
        if self.stopped:
            lines.append(f"Stopped early: {self.stopped}")
        return "\n".join(lines)

    def write_json(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        Path(path).write_text(json.dumps({**self.to_dict(), **(extra or {})}, indent=2) + "\n", encoding="utf-8")


def csv_counts(path: str | Path, labels: list[str],
               counted: Callable[[str], bool] | None = None) -> tuple[RunStats, int]:
    """The answers counted over a results CSV (every run that wrote to it): cells per answer, best guesses of
    UNCERTAIN cells, failed images; only the rows whose source `counted` accepts (all when None), and how many
    rows it left out. Streams the file: a long camera run's CSV can be large."""
    stats = RunStats(labels)
    frames = set()
    left_out = 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if counted is not None and not counted(row.get("source", "")):
                left_out += 1
            elif row.get("error"):
                stats.add_failure(row.get("source", ""), row["error"])
            elif row.get("label"):
                stats.add_cell(row["label"], row.get("predicted", ""))
                frames.add((row.get("source"), row.get("frame")))
    stats.images = len(frames)
    return stats, left_out
