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
