"""Final evaluation: validation and (only now) TEST metrics, temperature, threshold, figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from edge_app.core.model import softmax
from evaluation import calibration, plots
from evaluation.calibration import TARGET_ANSWERED_ACCURACY, TARGET_LEVEL
from evaluation.metrics import classification_report


def predict_logits(model, crops: np.ndarray, rows: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Logits for crops[rows], in small batches (the deployed model multiplies them by its views)."""
    parts = [np.asarray(model.predict_on_batch(crops[rows[i:i + batch_size]].astype(np.float32)))
             for i in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def _predictions(rows: np.ndarray, logits_by_row: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """(the rows with a located cell, the predicted class of every row: -1 where no cell was located)."""
    located = [r for r in rows if r in logits_by_row]
    pred = np.array([int(np.argmax(logits_by_row[r])) if r in logits_by_row else -1 for r in rows])
    return located, pred


def _answers(after: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """ECE after temperature, and the share answered and its accuracy at the threshold."""
    coverage, answered_accuracy = calibration.coverage_at(after, y, threshold)
    return {"ece_after": round(calibration.expected_calibration_error(after, y), 4),
            "coverage_at_threshold": round(coverage, 4),
            "accuracy_answered_at_threshold": None if answered_accuracy is None else round(answered_accuracy, 4)}


def _source_report(rows: np.ndarray, y: np.ndarray, logits_by_row: dict[int, np.ndarray], temperature: float,
                   threshold: float) -> dict:
    """Accuracy (unlocated images count as wrong), ECE and coverage at the threshold of one source's rows."""
    located, pred = _predictions(rows, logits_by_row)
    part = {"n": int(len(rows)), "accuracy": round(float(np.mean(pred == y[rows])), 4)}
    if located:
        part.update(_answers(softmax(np.stack([logits_by_row[r] for r in located]), temperature), y[located],
                             threshold))
    return part


def _split_report(name: str, rows: np.ndarray, y: np.ndarray, logits_by_row: dict[int, np.ndarray],
                  labels: list[str], temperature: float, threshold: float,
                  out_dir: Path, sources: np.ndarray) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Metrics and calibration of one split's rows, and its risk-coverage curve (coverage, answered accuracy)."""
    located, pred = _predictions(rows, logits_by_row)
    y_all = y[rows]
    report = classification_report(y_all, pred, labels)
    report["n_located"] = len(located)
    report["accuracy_located"] = round(float(np.mean(pred[pred >= 0] == y_all[pred >= 0])), 4) if located else None
    logits = np.stack([logits_by_row[r] for r in located])
    y_loc = y[located]
    before, after = softmax(logits), softmax(logits, temperature)
    report["calibration"] = {
        "ece_before": round(calibration.expected_calibration_error(before, y_loc), 4),
        **_answers(after, y_loc, threshold),
        "reliability_before": calibration.reliability_bins(before, y_loc),
        "reliability_after": calibration.reliability_bins(after, y_loc),
    }
    report["by_source"] = {str(source): _source_report(rows[sources[rows] == source], y, logits_by_row, temperature,
                                                       threshold) for source in np.unique(sources[rows])}
    plots.confusion_png(report["confusion"]["matrix"], labels, out_dir / f"confusion_{name}.png",
                        f"{name}: accuracy {report['accuracy']:.3f}")
    _, curve_coverage, curve_accuracy = calibration.risk_coverage(after, y_loc)
    return report, (curve_coverage, curve_accuracy)


def evaluate_and_calibrate(model, crops: np.ndarray, y: np.ndarray, frame: pd.DataFrame, labels: list[str],
                           out_dir: Path, out_of_fold: dict[int, np.ndarray] | None = None) -> dict:
    """Fit temperature and threshold, then report every split (TEST last, untouched before).

    They are fitted on the validation split, or, for a cross-validated run, on its out-of-fold logits of
    the training rows (`out_of_fold`, reported as "cross_validation"; a given validation split is then
    only reported).
    """
    out_dir = Path(out_dir)
    usable = (frame["reason"] == "").to_numpy()
    split = frame["split"].to_numpy()
    groups = frame["group"].fillna(frame["filepath"]).to_numpy()
    val_rows = np.flatnonzero(usable & (split == "val"))
    logits_by_row = dict(zip(val_rows.tolist(), predict_logits(model, crops, val_rows)))
    if out_of_fold:
        fitted_on, fit_rows = "cross_validation", np.array(sorted(out_of_fold))
        logits_by_row.update(out_of_fold)
    else:
        fitted_on, fit_rows = "val", val_rows
    temperature, threshold = calibration.fit_calibration(np.stack([logits_by_row[r] for r in fit_rows]),
                                                         y[fit_rows], groups[fit_rows])
    test_rows = np.flatnonzero(usable & (split == "test"))
    logits_by_row.update(zip(test_rows.tolist(), predict_logits(model, crops, test_rows)))  # TEST: first touch
    report = {"labels": labels, "calibration": {"temperature": round(temperature, 4), "min_confidence": round(threshold, 4),
                                                "target_answered_accuracy": TARGET_ANSWERED_ACCURACY,
                                                "target_level": TARGET_LEVEL,
                                                "fitted_on": fitted_on}, "splits": {}}
    curves, points, reliability = {}, {}, {}
    parts = {"cross_validation": fit_rows if out_of_fold else np.array([], int),
             "val": np.flatnonzero(split == "val"), "test": np.flatnonzero(split == "test")}
    for name, rows in parts.items():
        if len(rows) == 0:
            continue
        part, curves[name] = _split_report(name, rows, y, logits_by_row, labels, temperature, threshold, out_dir,
                                           frame["source"].to_numpy())
        report["splits"][name] = part
        cal = part["calibration"]
        if cal["accuracy_answered_at_threshold"] is not None:
            points[name] = (cal["coverage_at_threshold"], cal["accuracy_answered_at_threshold"])
        reliability[f"{name} before (ECE {cal['ece_before']:.3f})"] = cal["reliability_before"]
        reliability[f"{name} after T={temperature:.2f} (ECE {cal['ece_after']:.3f})"] = cal["reliability_after"]
    plots.reliability_png(reliability, out_dir / "reliability.png", "Reliability before/after temperature scaling")
    plots.risk_coverage_png(curves, points, out_dir / "risk_coverage.png", "Risk-coverage")
    return report
