"""How much `hemato adapt` helps a new laboratory: accuracy against the number of its cells per class.

    python -m evaluation.adaptation_curve --model M --split training/splits/two_labs.csv --out F.json

The new laboratory is PBC: the split's rows with source=pbc and split=val, in the model's classes. For each
size n (cells per class) and seed, n cells per class are drawn as the laboratory's reviewed cells, the model
is adapted on them exactly as `hemato adapt` does (same features, fit and file writing), and the adapted file
is scored on the remaining cells: its head, temperature, threshold and colour guard applied to their features
(--score-files: the adapted file itself through the device pipeline, slow). The unadapted base is scored
through the device pipeline on the same remaining cells (n = 0 row:
all cells). Features of every cell (and its augmented copies) are computed once and cached (--cache).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.adapt.adapt import DEFAULT_COPIES, adapted_model, cell_features, sha256_of
from edge_app.adapt.cells import CellSet
from edge_app.core.crops import file_cell_crop
from edge_app.core.dataset import split_rows
from edge_app.core.head_probe import HeadProbe
from edge_app.core.model import Classifier
from edge_app.core.pipeline import classify_crop, decide, is_answered, is_unusual_crop
from edge_app.core.vision import crop_statistics
from hemato.argtypes import output_file


def split_cells(split: Path, labels: list[str], source: str = "pbc", part: str = "val") -> list[tuple[Path, str]]:
    """(image, label) of the split's rows of one source and part, in the model's classes (paths relative to it)."""
    return [(Path(r["filepath"]), r["label"]) for r in split_rows(split, part)
            if r.get("source") == source and r["label"] in labels]


def outcomes(classifier: Classifier, crops: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 correct, answered: not UNCERTAIN) per cell, as `hemato run` decides."""
    correct, answered = [], []
    for crop, label in zip(crops, y):
        _, top, confidence = classify_crop(classifier, crop)
        answer, _ = decide(top, confidence, classifier.min_confidence, is_unusual_crop(classifier, crop))
        correct.append(top == classifier.labels[label])
        answered.append(answer == top)
    return np.array(correct), np.array(answered)


def score(classifier: Classifier, crops: list[np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy on every cell, and the share answered (not UNCERTAIN) with the accuracy of those answers."""
    return summary(*outcomes(classifier, crops, y))


def summary(correct: np.ndarray, answered: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(correct.mean()), "answered": float(answered.mean()),
            "answered_accuracy": float(correct[answered].mean()) if answered.any() else None}


def feature_outcomes(meta: dict[str, Any], data: bytes, x: np.ndarray, stats: np.ndarray,
                     y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 correct, answered) from the cells' head features and colour statistics and the adapted file's
    head, temperature, threshold and guard: the file's answers without running its backbone again (the
    features come from the builtin kernels, XNNPACK rounds int8 a little differently)."""
    from edge_app.core.model import softmax, stored_calibration
    from edge_app.core.ood import ColourGuard
    from edge_app.core.tflite_file import read_dense_head
    w, b = read_dense_head(data)
    temperature, threshold = stored_calibration(meta)  # as the Classifier reads them
    probs = softmax(x @ w.T + b, temperature)
    guard = ColourGuard.from_dict(meta.get("ood"))
    usual = np.ones(len(y), bool) if guard is None else guard.distance(stats) <= 1.0
    answered = usual & is_answered(probs.max(axis=1), threshold)
    return probs.argmax(axis=1) == y, answered


def summarise(values: list[float | None]) -> dict[str, Any]:
    kept = [v for v in values if v is not None]
    return {"mean": round(float(np.mean(kept)), 4) if kept else None,
            "sd": round(float(np.std(kept, ddof=1)), 4) if len(kept) > 1 else None,
            "min": round(float(min(kept)), 4) if kept else None, "max": round(float(max(kept)), 4) if kept else None,
            "runs": len(values)}


def curve(model: Path, split: Path, sizes: list[int], seeds: int, copies: int, cache: Path | None,
          threads: int | None = None, score_files: bool = False) -> dict[str, Any]:
    base = Classifier(model, threads=threads)
    labels = base.labels
    images = split_cells(split, labels)
    crops, y, skipped = [], [], 0
    for path, label in images:
        crop, _ = file_cell_crop(path, base.crop_settings)
        if crop is None:
            skipped += 1
            continue
        crops.append(crop)
        y.append(labels.index(label))
    y = np.array(y)
    print(f"adaptation_curve: {len(crops)} cells ({skipped} without a located cell)", file=sys.stderr)
    data = model.read_bytes()
    probe = HeadProbe(data, threads=threads)
    key = f"{sha256_of(data)}-{copies}-{len(crops)}"
    stored = np.load(cache) if cache is not None and cache.is_file() else None
    if stored is not None and str(stored["key"]) == key:
        features = (stored["x"], stored["cell"], stored["original"])
    else:
        start = time.perf_counter()
        features = cell_features(probe, crops, copies,
                                 lambda d: print(f"\rfeatures {d}/{len(crops)}", end="", file=sys.stderr))
        print(f"\nfeatures: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if cache is not None:
            np.savez(cache, key=key, x=features[0], cell=features[1], original=features[2])
    x, cell, original = features
    x_cells = x[original][np.argsort(cell[original])]  # one row per cell: its un-augmented crop
    stats = np.array([crop_statistics(crop, base.crop_settings) for crop in crops])
    result: dict[str, Any] = {"model": model.name, "model_sha256": sha256_of(data), "split": str(split),
                              "cells": len(crops), "per_class": {l: int((y == i).sum()) for i, l in enumerate(labels)},
                              "augmented_copies": copies, "seeds": seeds, "runs": []}
    base_correct, base_answered = outcomes(base, crops, y)
    result["base_all_cells"] = summary(base_correct, base_answered)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for seed in range(seeds):
                rng = np.random.default_rng(1000 * n + seed)
                chosen = np.concatenate([rng.choice(np.flatnonzero(y == k), n, replace=False)
                                         for k in range(len(labels))])
                rest = np.setdiff1d(np.arange(len(crops)), chosen)
                rows = np.isin(cell, chosen)
                renumber = {c: i for i, c in enumerate(chosen)}
                sub = (x[rows], np.array([renumber[c] for c in cell[rows]]), original[rows])
                cells = CellSet([crops[c] for c in chosen], [labels[y[c]] for c in chosen])
                start = time.perf_counter()
                adapted, meta = adapted_model(model, data, probe, sub, cells, labels, base.metadata, copies, seed)
                fit_s = time.perf_counter() - start
                path = Path(tmp) / f"adapted_{n}_{seed}.tflite"
                path.write_bytes(adapted)
                run = {"n": n, "seed": seed, "scored": len(rest), "fit_s": round(fit_s, 2),
                       "cv_accuracy": meta["adaptation"]["cv_accuracy"],
                       "temperature": meta["temperature"], "min_confidence": meta["min_confidence"],
                       "base": summary(base_correct[rest], base_answered[rest]),
                       "adapted": summary(*feature_outcomes(meta, adapted, x_cells[rest], stats[rest], y[rest]))}
                if score_files:
                    run["adapted_file"] = score(Classifier(path, threads=threads), [crops[i] for i in rest], y[rest])
                result["runs"].append(run)
                print(f"n={n} seed={seed}: base {run['base']['accuracy']:.3f} -> adapted "
                      f"{run['adapted']['accuracy']:.3f} (cv {run['cv_accuracy']:.3f}, fit {fit_s:.1f} s)",
                      file=sys.stderr)
    table = [{"n": 0, "accuracy": summarise([result["base_all_cells"]["accuracy"]]),
              "answered": summarise([result["base_all_cells"]["answered"]])}]
    for n in sizes:
        runs = [r for r in result["runs"] if r["n"] == n]
        table.append({"n": n, "accuracy": summarise([r["adapted"]["accuracy"] for r in runs]),
                      "base_on_same_cells": summarise([r["base"]["accuracy"] for r in runs]),
                      "answered": summarise([r["adapted"]["answered"] for r in runs]),
                      "answered_accuracy": summarise([r["adapted"]["answered_accuracy"] for r in runs]),
                      "cv_accuracy": summarise([r["cv_accuracy"] for r in runs])})
    result["table"] = table
    return result


def markdown(result: dict[str, Any]) -> str:
    """The curve as a Markdown table (mean ± standard deviation over the seeds)."""
    def cell(s: dict[str, Any] | None) -> str:
        if not s or s["mean"] is None:
            return "–"
        return f"{100 * s['mean']:.1f}" + (f" ± {100 * s['sd']:.1f}" if s.get("sd") is not None else "")
    lines = ["| cells per class | accuracy % | base on the same cells % | answered % | accuracy of answers % "
             "| cross-validated on the given cells % |", "|---:|---:|---:|---:|---:|---:|"]
    for row in result["table"]:
        lines.append(f"| {row['n'] or '0 (base)'} | {cell(row['accuracy'])} | {cell(row.get('base_on_same_cells'))} "
                     f"| {cell(row['answered'])} | {cell(row.get('answered_accuracy'))} | {cell(row.get('cv_accuracy'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.adaptation_curve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out", type=output_file, required=True, help="the result as JSON (and a .md table beside it)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--copies", type=int, default=DEFAULT_COPIES, help="augmented copies per cell")
    parser.add_argument("--cache", type=Path, help="features cache (.npz), reused when model and copies match")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--score-files", action="store_true",
                        help="also score every adapted file through the device pipeline (slow: its backbone "
                             "runs on every remaining cell); by default the file's head, temperature, threshold "
                             "and colour guard are applied to the cells' features")
    args = parser.parse_args(argv)
    result = curve(args.model, args.split, args.sizes, args.seeds, args.copies, args.cache, args.threads,
                   args.score_files)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
