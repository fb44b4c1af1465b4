"""Temperature scaling, expected calibration error and the abstention threshold (numpy only)."""
from __future__ import annotations

import numpy as np

from edge_app.core.model import softmax
from edge_app.core.pipeline import NO_ANSWER, is_answered

TARGET_ANSWERED_ACCURACY = 0.99
TARGET_LEVEL = 0.9  # the threshold must reach the target in 90 % of resamples of the validation photographs


def nll(logits: np.ndarray, y: np.ndarray, temperature: float, weights: np.ndarray | None = None) -> float:
    """Mean (weighted, when weights are given) negative log-likelihood of the true labels at a temperature."""
    p = softmax(logits, temperature)
    return float(-np.average(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)), weights=weights))


def group_weights(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Weight 1 / (images in its group) per image, so that every group (photograph) counts once."""
    if groups is None:
        return np.ones(n)
    _, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return 1.0 / counts[index]


def fit_temperature(logits: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> float:
    """The temperature minimising validation NLL, each group counted once (log-spaced grid, then finer).

    Copies of one photograph are not independent evidence: counted per image, the few photographs with
    most copies would set the temperature.
    """
    weights = group_weights(groups, len(y))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = min(grid, key=lambda t: nll(logits, y, t, weights))
    fine = best * np.exp(np.linspace(-0.06, 0.06, 61))
    return float(min(fine, key=lambda t: nll(logits, y, t, weights)))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the weighted mean |accuracy - confidence|."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict]:
    """Per-bin count, mean confidence and accuracy, for the reliability diagram."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        out.append({"lo": float(lo), "hi": float(hi), "count": int(in_bin.sum()),
                    "confidence": float(confidence[in_bin].mean()) if in_bin.any() else None,
                    "accuracy": float(correct[in_bin].mean()) if in_bin.any() else None})
    return out


def risk_coverage(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, coverage, accuracy of answered) when answering only confidence >= threshold."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    order = np.argsort(-confidence)
    answered = np.arange(1, len(y) + 1)
    return confidence[order], answered / len(y), np.cumsum(correct[order]) / answered


def choose_threshold(probs: np.ndarray, y: np.ndarray, target_accuracy: float = 0.98,
                     groups: np.ndarray | None = None, level: float = 0.9, resamples: int = 1000,
                     seed: int = 0) -> float:
    """Lowest confidence threshold whose answered cells reach target_accuracy in `level` of bootstrap resamples.

    Validation holds few independent cells (copies of one photograph are not independent), so the
    threshold where validation just touches the target is as likely as not to miss it on new cells.
    Resampling whole groups (photographs; each image alone when none are given) asks for the target
    at a lower confidence bound instead. Every higher threshold must meet it too. NO_ANSWER when none does.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    group_index = np.unique(np.arange(len(y)) if groups is None else np.asarray(groups), return_inverse=True)[1]
    thresholds = np.unique(confidence)
    position = np.searchsorted(thresholds, confidence)
    answered = np.zeros((group_index.max() + 1, len(thresholds)))
    right = np.zeros_like(answered)
    np.add.at(answered, (group_index, position), 1.0)
    np.add.at(right, (group_index, position), correct)
    # a cell is answered at every threshold up to its own confidence: cumulative sums from the top
    answered = np.cumsum(answered[:, ::-1], axis=1)[:, ::-1]
    right = np.cumsum(right[:, ::-1], axis=1)[:, ::-1]
    n_groups = len(answered)
    weights = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples)
    resampled_answered = weights @ answered
    accuracy = np.where(resampled_answered > 0, (weights @ right) / np.maximum(resampled_answered, 1), 1.0)
    meets = np.quantile(accuracy, 1.0 - level, axis=0) >= target_accuracy
    if not meets[-1]:
        return NO_ANSWER
    failing = np.flatnonzero(~meets)
    return float(thresholds[failing[-1] + 1] if len(failing) else thresholds[0])


def fit_calibration(logits: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> tuple[float, float]:
    """(temperature, answer threshold) from validation logits: the one rule for training and for each converted file."""
    temperature = fit_temperature(logits, y, groups)
    threshold = choose_threshold(softmax(logits, temperature), y, TARGET_ANSWERED_ACCURACY, groups=groups,
                                 level=TARGET_LEVEL)
    return temperature, threshold


def coverage_at(probs: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float | None]:
    """(share of cells answered, accuracy on them) at a confidence threshold."""
    return coverage_of_answers(probs, y, is_answered(probs.max(axis=1), threshold))


def coverage_of_answers(probs: np.ndarray, y: np.ndarray, answered: np.ndarray) -> tuple[float, float | None]:
    """(share of cells answered, accuracy on them) for a given answered mask."""
    if not answered.any():
        return 0.0, None
    return float(answered.mean()), float((probs.argmax(axis=1)[answered] == y[answered]).mean())
