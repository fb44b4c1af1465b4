"""Split whole groups (photographs, patients) into validation, about the same share of every label."""
from __future__ import annotations

import numpy as np


def grouped_stratified_split(labels: np.ndarray, groups: np.ndarray, val_fraction: float,
                             seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole groups, about val_fraction of each label."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        label_groups = np.unique(groups[idx])
        if len(label_groups) < 2:
            continue  # one group cannot be split without leaking
        target = val_fraction * len(idx)
        taken = 0
        for g in rng.permutation(label_groups):
            members = idx[groups[idx] == g]
            if taken >= target or taken + len(members) > 1.5 * target and taken > 0:
                continue
            is_val[members] = True
            taken += len(members)
            if taken >= target:
                break
        if is_val[idx].all():  # keep at least one group for training
            is_val[idx[groups[idx] == groups[idx][0]]] = False
    return is_val


def grouped_stratified_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) per row: whole groups, each fold about 1/folds of every label.

    Groups go largest first (ties in random order) to the fold holding fewest rows of their labels.
    """
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    labels = np.asarray(labels)
    counts = np.zeros((len(names), int(labels.max()) + 1))
    np.add.at(counts, (index, labels), 1)
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((folds, counts.shape[1]))
    fold_of_group = np.zeros(len(names), dtype=int)
    for g in order:
        load = (fold_counts * (counts[g] > 0)).sum(axis=1) + 1e-6 * fold_counts.sum(axis=1)
        fold_of_group[g] = int(np.argmin(load))
        fold_counts[fold_of_group[g]] += counts[g]
    return fold_of_group[index]
