"""Classification metrics from integer labels (numpy only): accuracy, per-class P/R/F1, confusion."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predictions; a prediction of -1 (no cell) is dropped."""
    matrix = np.zeros((num_classes, num_classes), int)
    for t, p in zip(y_true, y_pred):
        if p >= 0:
            matrix[t, p] += 1
    return matrix


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy (a -1 prediction counts as wrong), macro F1, per-class metrics and the confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    per_class = {}
    f1s = []
    for i, name in enumerate(labels):
        tp = matrix[i, i]
        predicted = matrix[:, i].sum()
        support = int((y_true == i).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": support}
    return {"n": int(len(y_true)), "accuracy": round(float(np.mean(y_true == y_pred)), 4),
            "macro_f1": round(float(np.mean(f1s)), 4), "per_class": per_class,
            "confusion": {"labels": labels, "matrix": matrix.tolist()}}
