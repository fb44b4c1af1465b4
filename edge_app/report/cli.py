"""`hemato report RESULTS.csv --out report.html`: the differential, the model and a gallery in one HTML file.

RESULTS.csv is what `hemato run` writes or what the review page exports (then its reviewed cells are marked).
Thumbnails are cut from the source images named in the CSV (paths relative to the CSV's folder or absolute).
Exit status: 0 written, 2 the CSV cannot be read.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path


from edge_app.core.frames import as_bgr
from edge_app.core.image_decode import ImageError, load_image
from edge_app.core.metadata import ModelFileError, read_model_metadata
from edge_app.core.model_path import MODEL_HELP, find_model
from edge_app.core.overlay import rgb_jpeg
from edge_app.core.records import CELL_COLUMNS, is_reviewed, read_rows, row_box, row_image
from edge_app.core.vision import crop_for_model
from edge_app.core.wording import naming
from edge_app.report.report import MAX_THUMBNAILS, ReportCell, ReportInput, render
from hemato.argtypes import output_file

THUMBNAIL_PX = 112


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="a hemato run CSV, or the review page's export")
    parser.add_argument("--out", type=output_file, default=Path("report.html"),
                        help="the HTML file (default report.html)")
    parser.add_argument("--model", help="the model that classified the cells: " + MODEL_HELP)
    parser.add_argument("--sample", help="what the sample is called (default: the folder of its images)")


def read_results(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The CSV's rows and its class labels (its p_<LABEL> columns, in order)."""
    rows, columns = read_rows(path)
    if not CELL_COLUMNS <= set(columns):
        raise ValueError(f"{path}: not a hemato run CSV (source, label and box columns missing)")
    return rows, [c[2:] for c in columns if c.startswith("p_")]


def build(results: Path, model_file: str, model_meta: dict, sample: str | None) -> ReportInput:
    rows, labels = read_results(results)
    labels = list(model_meta.get("labels") or labels)
    cells, failed, wanted, per_label = [], 0, {}, Counter()
    for row in rows:
        if row.get("error"):
            failed += 1
            continue
        cell = ReportCell(row["source"].lstrip("'"), row["label"], row.get("model_label") or row["label"],
                          float(row.get("confidence") or 0), is_reviewed(row))
        cells.append(cell)
        per_label[cell.label] += 1
        if per_label[cell.label] <= MAX_THUMBNAILS and not int(row.get("frame") or 0):
            try:
                wanted.setdefault(cell.source, []).append((cell, row_box(row)))
            except ValueError as exc:  # a hand-edited box: the cell is counted, without its picture
                print(f"hemato report: no picture for {exc}", file=sys.stderr)
    missing = 0
    for source, items in wanted.items():
        path = row_image(source, results)
        try:
            decoded = load_image(path)
        except (ImageError, OSError):
            missing += 1
            continue
        bgr = as_bgr(decoded.image)
        for cell, b in items:
            box = b.divided_by(decoded.scale)
            if box.x1 > box.x0 and box.y1 > box.y0:
                cell.jpeg = rgb_jpeg(crop_for_model(bgr, box, THUMBNAIL_PX), 88)
    if missing:  # e.g. run from another folder than `hemato run`, whose relative paths the CSV holds
        print(f"hemato report: {missing} of {len(wanted)} images could not be read, so their cells have no "
              f"picture (a relative path in the CSV is read from this folder or from the CSV's)", file=sys.stderr)
    if sample is None:
        sources = [c.source for c in cells] or [str(results)]
        try:
            sample = os.path.commonpath([str(Path(s).parent) for s in sources]) or str(results.parent)
        except ValueError:
            sample = str(results)
    return ReportInput(sample, model_file, model_meta, labels, cells, failed)


def main(args: argparse.Namespace) -> int:
    model_file, meta = "unknown (pass --model)", {}
    try:
        path = find_model(args.model)
        meta, model_file = read_model_metadata(path), str(path)
    except ModelFileError as exc:
        if args.model:
            print(f"hemato report: {exc}", file=sys.stderr)
            return 2
    try:
        report = build(args.results, model_file, meta, args.sample)
    except (OSError, ValueError, KeyError) as exc:
        print(f"hemato report: {naming(args.results, getattr(exc, 'strerror', None) or exc)}", file=sys.stderr)
        return 2
    if not report.labels:
        print(f"hemato report: {args.results} names no classes (no p_<CLASS> columns) and no model was found",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report), encoding="utf-8")
    print(f"Report: {args.out} ({len(report.cells)} cells; open it in a browser, print it to PDF)")
    return 0
