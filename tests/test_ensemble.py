"""Cross-validated head: folds of whole groups, nested out-of-fold calibration, per-group temperature."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from training import ensemble
from evaluation.calibration import fit_temperature
from training.groups import grouped_stratified_folds


def test_folds_keep_each_group_whole_and_every_fold_holds_every_label():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), rng.integers(1, 12, 60))
    labels = (groups % 3).astype(int)
    fold = grouped_stratified_folds(labels, groups, 5, seed=2)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    for f in range(5):
        for label in range(3):
            share = np.mean(fold[labels == label] == f)
            assert 0.1 <= share <= 0.3, (f, label, share)


def test_temperature_counts_each_group_once():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (40, 4))
    y = np.where(rng.random(40) < 0.7, logits.argmax(axis=1), rng.integers(0, 4, 40))
    copies = rng.integers(1, 30, 40)  # some photographs have many augmented copies
    dup_logits, dup_y, dup_groups = np.repeat(logits, copies, axis=0), np.repeat(y, copies), np.repeat(np.arange(40), copies)
    once = fit_temperature(logits, y)
    assert abs(fit_temperature(dup_logits, dup_y, dup_groups) - once) < 1e-6
    assert abs(fit_temperature(dup_logits, dup_y) - once) > 1e-3  # counted per image it would differ


def test_nested_out_of_fold_logits_come_from_heads_that_never_saw_the_group(monkeypatch):
    """Every row is predicted by an ensemble none of whose heads trained or stopped on its group."""
    groups = np.repeat(np.arange(30), 3)
    y = (np.arange(30) % 2).repeat(3)
    feats = np.stack([groups.astype(np.float32), y.astype(np.float32), np.ones(len(y), np.float32)], axis=1)[None]
    log = []

    def fake_fit_dense(x_train, y_train, x_val, y_val, config, class_weight, units, verbose=2, log_csv=None):
        log.append(("fit", set(x_train[:, 0].astype(int)) | set(x_val[:, 0].astype(int))))
        return np.zeros((3, units), np.float32), np.zeros(units, np.float32)

    real_view_logits = ensemble.view_logits

    def spy_view_logits(feats_, pos, kernel, bias):
        log.append(("predict", set(feats_[0, pos, 0].astype(int))))
        return real_view_logits(feats_, pos, kernel, bias)

    monkeypatch.setattr(ensemble, "fit_dense", fake_fit_dense)
    monkeypatch.setattr(ensemble, "view_logits", spy_view_logits)
    config = SimpleNamespace(folds=3, seed=0)
    logits, outer = ensemble.nested_out_of_fold_logits(feats, y, np.arange(len(y)), groups, config, None, 2, None)
    assert logits.shape == (len(y), 2) and len(set(outer)) == 3
    predicted = set()
    for i, (kind, seen) in enumerate(log):
        if kind == "predict":
            fits = [s for k, s in log[max(0, i - 3):i] if k == "fit"]
            assert len(fits) == 3 and all(not (s & seen) for s in fits)
            predicted |= seen
    assert predicted == set(range(30))


def test_cross_validated_run_has_no_validation_split_and_calibrates_out_of_fold(tmp_path):
    from test_training import _train, write_dataset
    data = write_dataset(tmp_path / "data", train_per_class=12)
    out = tmp_path / "run"
    report = _train(data, out, folds=2, augmented_copies=0)
    splits = pd.read_csv(out / "splits.csv")
    assert not (splits["split"] == "val").any()
    assert report["calibration"]["fitted_on"] == "cross_validation"
    assert set(report["splits"]) == {"cross_validation", "test"}
    assert report["splits"]["cross_validation"]["n"] == int((splits["split"] == "train").sum())
    assert np.load(out / "out_of_fold_logits.npy").shape == (24, 2)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training"]["config"]["folds"] == 2
    history = pd.read_csv(out / "history.csv")  # the shipped heads' epochs, one block per fold
    assert sorted(history["fold"].unique()) == [1, 2] and {"loss", "val_loss"} <= set(history.columns)
    assert not list(out.glob("head_history_fold*.csv"))
    again = _train(data, out, folds=2, augmented_copies=0)  # restarts from the saved ensemble
    assert again["calibration"] == report["calibration"]
