"""`hemato adapt CELLS --out models/adapted.tflite`: a copy of the model with its head refitted on your cells.

CELLS is a folder with one sub-folder per class (CELLS/LYMPHOCYTE/*.jpg, ...: each image a frame or a single
cell, the largest located cell is taken; files named *.crop.jpg / *.crop.png are the model's input itself), or
the CSV the review page exports (only its reviewed rows are used). No TensorFlow: the backbone runs through the
.tflite file, the head is fitted with numpy. Exit status: 0 written, 2 refused (the message says why).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_app.adapt.adapt import DEFAULT_COPIES, adapt_file
from edge_app.adapt.cells import MIN_CELLS, CellsError, load_cells, plan_cells
from edge_app.core.metadata import ModelFileError, read_model_metadata
from edge_app.core.model_path import MODEL_HELP, find_model
from edge_app.core.pipeline import NO_ANSWER
from edge_app.core.tflite_file import find_dense_head, write_model
from edge_app.core.vision import CropSettings
from hemato.argtypes import non_negative_int, output_file

DEFAULT_OUT = Path("models") / "adapted.tflite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", type=Path, help="a folder with one sub-folder per class, or the review page's CSV "
                                                 f"(at least {MIN_CELLS} cells of each class given)")
    parser.add_argument("--out", type=output_file, default=DEFAULT_OUT, help=f"the adapted model (default: {DEFAULT_OUT})")
    parser.add_argument("--model", help="the base " + MODEL_HELP[4:])
    parser.add_argument("--copies", type=non_negative_int, default=DEFAULT_COPIES,
                        help=f"augmented copies per cell: mirrored, turned 45 degrees, both (0..3, default "
                             f"{DEFAULT_COPIES})")
    parser.add_argument("--seed", type=int, default=0, help="cross-validation folds' seed (default 0)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")


def _error(message: str) -> int:
    print(f"hemato adapt: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        base = find_model(args.model)
        meta = read_model_metadata(base)
        if find_dense_head(base.read_bytes()).bias_at is None:
            raise ModelFileError(f"{base}: its dense layer has no bias to refit")
    except ModelFileError as exc:
        return _error(str(exc))
    if args.out.resolve() == base.resolve():
        return _error(f"--out {args.out} is the base model itself: choose another file")
    labels = list(meta["labels"])
    settings = CropSettings.from_metadata(meta)
    try:
        plans = plan_cells(args.cells, labels)
        print(f"hemato adapt: base {base} ({len(labels)} classes); reading {len(plans)} cells from {args.cells}",
              file=sys.stderr)
        cells = load_cells(plans, labels, settings)
    except (CellsError, OSError) as exc:
        return _error(str(exc))
    for source, reason in cells.skipped:
        print(f"hemato adapt: skipped {source}: {reason}", file=sys.stderr)
    counts = cells.counts(labels)
    print("Cells: " + ", ".join(f"{label} {n}" for label, n in counts.items())
          + (f" ({len(cells.skipped)} images skipped)" if cells.skipped else ""))
    kept = cells.missing(labels)
    if kept:
        print(f"No cells of {', '.join(kept)}: kept as the base model learnt {'it' if len(kept) == 1 else 'them'}")
    try:
        data, written = adapt_file(base, cells, labels, meta, min(args.copies, 3), args.seed, args.threads)
    except (ModelFileError, RuntimeError) as exc:
        return _error(str(exc))
    record = written["adaptation"]
    try:
        write_model(args.out, data)
    except OSError as exc:
        return _error(f"cannot write {args.out}: {exc.strerror or exc}")
    print(f"Accuracy on these cells, cross-validated ({record['cv_folds']} folds): "
          f"base {100 * record['base_accuracy_on_these_cells']:.1f} % -> adapted {100 * record['cv_accuracy']:.1f} %")
    print(f"Calibration: temperature {written['temperature']}, answer threshold {written['min_confidence']} "
          f"({100 * record['cv_answered']:.0f} % of these cells answered, the rest UNCERTAIN)")
    if record["cells_called_kept_class"]:
        print(f"Note: {record['cells_called_kept_class']} of these cells are still called "
              f"{' or '.join(record['kept_from_base'])} (cross-validated): without cells of that class the model "
              "cannot learn they are not; review some and adapt again.")
    if record["calibration_kept_from_base"]:
        print("Note: every one of these cells was right when held out, which bounds no error rate: the base "
              "model's temperature and threshold are kept. Review more cells, and adapt again.")
    elif written["min_confidence"] >= NO_ANSWER:
        print("Note: with these cells no threshold can be shown to reach the target accuracy, so every answer "
              "will be UNCERTAIN; add more reviewed cells.")
    print(f"Adapted model: {args.out}  ({time.perf_counter() - started:.0f} s; use it with --model {args.out})")
    return 0
