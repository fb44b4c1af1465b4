"""PNG figures for reports: confusion matrix, reliability diagram, risk-coverage curve."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, legend: bool = True) -> None:
    """Label the axes, add the legend, save the figure as PNG and free it."""
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_png(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    """Heat map of a confusion matrix with counts in the cells."""
    plt = _pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    _finish(fig, ax, "predicted", "true", title, path, legend=False)


def reliability_png(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """Accuracy against confidence per bin, one line per named set of bins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, bins in curves.items():
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    _finish(fig, ax, "confidence", "accuracy", title, path)


def risk_coverage_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], threshold_points: dict[str, tuple[float, float]],
                      path: Path, title: str) -> None:
    """Accuracy of answered cells against coverage, with the stored threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (coverage, accuracy) in curves.items():
        ax.plot(coverage, accuracy, label=name)
    for name, (coverage, accuracy) in threshold_points.items():
        ax.plot([coverage], [accuracy], "o", label=f"{name} at stored threshold")
    _finish(fig, ax, "coverage (share of cells answered)", "accuracy on answered cells", title, path)
