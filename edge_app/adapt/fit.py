"""Fit a new dense head on a laboratory's cells with numpy, starting from and regularised towards the base head.

The deployed graph averages the dense layer's logits over its rotation views; the dense layer is linear, so
that equals the dense layer applied to the mean of the views' features: one sample per (augmented) crop.
Loss: mean cross-entropy + strength / 2 * ||W - W_base||^2 (the bias moves freely): with 5 cells per class
the head moves a little, with 20 more. The strength, the temperature and the answer threshold are chosen by
cross-validation over the given cells (their augmented copies always in the same fold as the cell). A class
with no given cells (a rare one, such as basophils) keeps the base head's row.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edge_app.core.model import softmax
from edge_app.core.pipeline import NO_ANSWER, is_answered
from evaluation.calibration import fit_calibration, nll

STRENGTHS = (0.003, 0.01, 0.03, 0.1, 0.3)  # relative to the features' mean squared norm
MAX_FOLDS = 5


def fit_head(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, strength: float,
             iterations: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising mean cross-entropy + strength / 2 * ||W - w0||^2 (Nesterov-accelerated gradient).

    A class without any sample in y keeps its base row (w0, b0) and is left out of the loss: with it in the
    softmax, raising every other class together would lower the loss and crowd it out.
    """
    n, classes = len(x), len(w0)
    given = np.bincount(y, minlength=classes) > 0
    xb = np.hstack([x, np.ones((n, 1))])
    theta0 = np.hstack([w0, b0[:, None]]).T  # (D + 1, C)
    penalty = np.full((xb.shape[1], 1), strength)
    penalty[-1] = 0.0
    onehot = np.eye(classes)[y]
    lipschitz = 0.5 * np.linalg.norm(xb, 2) ** 2 / n + strength
    step = 1.0 / lipschitz
    theta = previous = theta0.copy()
    for k in range(iterations):
        look = theta + (k / (k + 3)) * (theta - previous)
        logits = xb @ look
        logits[:, ~given] = -np.inf  # the cells say nothing of these classes: left out of the loss
        grad = xb.T @ (softmax(logits) - onehot) / n + penalty * (look - theta0)
        previous, theta = theta, look - step * grad
    return theta[:-1].T.copy(), theta[-1].copy()


def cell_folds(y_cells: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per cell, stratified by class (each class's cells dealt round the folds in random order)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y_cells), int)
    for label in np.unique(y_cells):
        members = rng.permutation(np.flatnonzero(y_cells == label))
        fold[members] = np.arange(len(members)) % folds
    return fold


@dataclass
class AdaptedHead:
    """The refitted head and what cross-validation over the given cells found."""

    weights: np.ndarray
    bias: np.ndarray
    temperature: float
    min_confidence: float
    strength: float
    folds: int
    cv_accuracy: float        # out-of-fold top-1 accuracy of the adapted head on the given cells
    base_accuracy: float      # the base head's accuracy on the same cells (original crops)
    cv_answered: float        # share of cells answered (not UNCERTAIN) at the threshold, out of fold
    called_kept: int = 0      # given cells whose out-of-fold top class is a class given no cells
    calibration_kept: bool = False  # every out-of-fold answer was right: the base's temperature and threshold kept


def adapt_head(features: np.ndarray, y: np.ndarray, cell: np.ndarray, original: np.ndarray,
               w0: np.ndarray, b0: np.ndarray, seed: int = 0,
               base_calibration: tuple[float, float] = (1.0, NO_ANSWER)) -> AdaptedHead:
    """Choose the strength by cross-validation, fit temperature and threshold on out-of-fold logits, refit on all.

    features: (samples, D), one row per (augmented) crop; y: class index; cell: which cell a sample comes from;
    original: True for the un-augmented crop (what is scored).
    base_calibration: the base file's (temperature, threshold), kept when every out-of-fold answer is right:
    such cells set no bound on the errors, and the fitted temperature would fall towards 0 (every probability 1).
    """
    cells = np.unique(cell)
    y_cells = np.array([y[cell == c][0] for c in cells])
    counts = np.bincount(y_cells, minlength=len(w0))
    folds = int(min(MAX_FOLDS, counts[counts > 0].min()))  # classes without cells keep the base's row
    fold_of = dict(zip(cells, cell_folds(y_cells, folds, seed)))
    fold = np.array([fold_of[c] for c in cell])
    scale = float(np.mean(np.sum(features ** 2, axis=1)))
    scored = np.flatnonzero(original)
    results = []
    for relative in STRENGTHS:
        strength = relative / scale * 100.0
        logits = np.zeros((len(features), len(w0)))
        for k in range(folds):
            train = fold != k
            w, b = fit_head(features[train], y[train], w0, b0, strength)
            logits[~train] = features[~train] @ w.T + b
        oof = logits[scored]
        loss = nll(oof, y[scored], 1.0)
        results.append((loss, strength, oof))
    _, strength, oof = min(results, key=lambda r: r[0])
    kept = bool((oof.argmax(1) == y[scored]).all())
    temperature, threshold = base_calibration if kept else fit_calibration(oof, y[scored], None)
    probs = softmax(oof, temperature)
    weights, bias = fit_head(features, y, w0, b0, strength)
    base = features[scored] @ w0.T + b0
    # the fit cannot teach that a cell is not of a class given no cells: count the cells still called one
    called_kept = int((counts[oof.argmax(1)] == 0).sum())
    return AdaptedHead(weights, bias, float(temperature), float(threshold), float(strength), folds,
                       float((oof.argmax(1) == y[scored]).mean()), float((base.argmax(1) == y[scored]).mean()),
                       float(is_answered(probs.max(1), threshold).mean()), called_kept, kept)


def fit_logit_range(head: AdaptedHead, features: np.ndarray, logit_range: tuple[float, float] | None,
                    margin: float = 0.9) -> AdaptedHead:
    """Keep the new logits inside the file's quantised logit range (int8 files quantise logits before the view
    average): shift every bias alike (softmax ignores it) and, if still too wide, scale weights, bias and
    temperature together (probabilities unchanged)."""
    if logit_range is None:
        return head
    lo, hi = logit_range
    logits = features @ head.weights.T + head.bias
    bias = head.bias + ((lo + hi) / 2 - (logits.max() + logits.min()) / 2)
    spread = float(logits.max() - logits.min())
    shrink = min(1.0, margin * (hi - lo) / spread) if spread > 0 else 1.0
    centre = (lo + hi) / 2
    return replace(head, weights=head.weights * shrink, bias=(bias - centre) * shrink + centre,
                   temperature=head.temperature * shrink)
