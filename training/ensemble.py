"""Cross-validated head: one head per fold of whole photographs, shipped as their mean.

Every training photograph then teaches the shipped head, and none is spent on a validation split
alone. The heads are linear, so the mean of their logits is one dense layer (the mean weights): no
extra cost on the device. Calibration needs logits of the same kind of model on photographs it has
not seen, so it is fitted on nested out-of-fold logits: for each outer fold, an ensemble trained on
the other folds (itself of `folds` heads) predicts it.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from training.groups import grouped_stratified_folds
from training.head import fit_dense, stacked_views, view_logits


def mean_head_of_folds(feats: np.ndarray, y: np.ndarray, pos: np.ndarray, groups: np.ndarray, config,
                       class_weight: dict[int, float] | None, units: int, augmented: np.ndarray | None,
                       seed: int, label: str, history_csv: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias): the mean of `config.folds` heads, each early-stopped on its held-out fold of rows `pos`.

    augmented, when given, is (copies, len(pos), D) in pos's order; held-out folds use clean crops only.
    history_csv, when given, receives every head's epochs, with a "fold" column.
    """
    fold = grouped_stratified_folds(y[pos], groups, config.folds, seed)
    kernels, biases = [], []
    fold_csvs = [None if history_csv is None else history_csv.with_name(f"{history_csv.stem}_fold{f + 1}.csv")
                 for f in range(config.folds)]
    for f in range(config.folds):
        fit, held = fold != f, fold == f
        print(f"{label}: head {f + 1}/{config.folds} ({fit.sum()} images, stopping on {held.sum()})",
              file=sys.stderr, flush=True)
        train = stacked_views(feats, y, pos[fit], None if augmented is None else augmented[:, fit])
        kernel, bias = fit_dense(*train, *stacked_views(feats, y, pos[held]), config, class_weight, units, verbose=0,
                                 log_csv=fold_csvs[f])
        kernels.append(kernel)
        biases.append(bias)
    if history_csv is not None:
        merge_fold_histories(history_csv, fold_csvs)
    return np.mean(kernels, axis=0), np.mean(biases, axis=0)


def merge_fold_histories(history_csv: Path, parts: list[Path]) -> None:
    """Join the per-fold epoch logs `parts` (fold 1 first) into history_csv with a "fold" column; delete the parts."""
    with open(history_csv, "w", newline="") as out:
        writer = None
        for fold, part in enumerate(parts, start=1):
            with open(part, newline="") as handle:
                for row in csv.DictReader(handle):
                    if writer is None:
                        writer = csv.DictWriter(out, ["fold", *row])
                        writer.writeheader()
                    writer.writerow({"fold": fold, **row})
            part.unlink()


def nested_out_of_fold_logits(feats: np.ndarray, y: np.ndarray, pos: np.ndarray, groups: np.ndarray, config,
                              class_weight: dict[int, float] | None, units: int,
                              augmented: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(logits per row of pos, outer fold per row): each row predicted by a fold ensemble that never saw its group."""
    outer = grouped_stratified_folds(y[pos], groups, config.folds, config.seed + 1)
    logits = np.zeros((len(pos), units), np.float32)
    for o in range(config.folds):
        fit = outer != o
        kernel, bias = mean_head_of_folds(feats, y, pos[fit], groups[fit], config, class_weight, units,
                                          None if augmented is None else augmented[:, fit], config.seed,
                                          f"calibration ensemble {o + 1}/{config.folds}")
        logits[outer == o] = view_logits(feats, pos[outer == o], kernel, bias)
    return logits, outer


def train_ensemble_head(model, feats: np.ndarray, y: np.ndarray, pos: np.ndarray, groups: np.ndarray, config,
                        class_weight: dict[int, float] | None, out_dir: Path,
                        augmented: np.ndarray | None = None) -> np.ndarray:
    """Set model's "logits" layer to the fold heads' mean; return nested out-of-fold logits of rows pos.

    Both are saved (head.weights.npz, out_of_fold_logits.npy) so a restarted run skips this phase.
    """
    logits_layer = model.get_layer("logits")
    saved, saved_logits = Path(out_dir) / "head.weights.npz", Path(out_dir) / "out_of_fold_logits.npy"
    if saved.exists() and saved_logits.exists():
        data = np.load(saved)
        logits_layer.set_weights([data["kernel"], data["bias"]])
        print("head: restored the fold ensemble from head.weights.npz", file=sys.stderr)
        return np.load(saved_logits)
    out_of_fold, _ = nested_out_of_fold_logits(feats, y, pos, groups, config, class_weight, logits_layer.units,
                                               augmented)
    np.save(saved_logits, out_of_fold)
    kernel, bias = mean_head_of_folds(feats, y, pos, groups, config, class_weight, logits_layer.units, augmented,
                                      config.seed, "shipped ensemble", Path(out_dir) / "head_history.csv")
    logits_layer.set_weights([kernel, bias])
    np.savez(saved, kernel=kernel, bias=bias)
    return out_of_fold
