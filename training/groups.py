"""Recover which images are augmentations of the same photograph, and split by those groups.

TRAIN holds rotated/flipped/shifted copies of a few hundred cells. A validation split that
puts copies of one cell on both sides measures memory, not generalisation, so we cluster
look-alikes (by rotation-averaged backbone features) and split whole clusters.
"""
from __future__ import annotations

import numpy as np


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """Cluster unit vectors by cosine similarity (k-means++ start); returns a cluster id per row."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = 1.0 - np.max(x @ np.stack(centres).T, axis=1)
        weights = np.clip(distance, 0, None) ** 2
        centres.append(x[rng.choice(len(x), p=weights / weights.sum())] if weights.sum() > 0 else x[rng.integers(len(x))])
    centres = np.stack(centres)
    assign = np.zeros(len(x), int)
    for _ in range(iterations):
        assign = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centre = members.sum(axis=0)
                centres[c] = centre / (np.linalg.norm(centre) + 1e-12)
    return np.unique(assign, return_inverse=True)[1]


def recover_groups(descriptors: np.ndarray, labels: np.ndarray, group_size: int = 60, seed: int = 0) -> np.ndarray:
    """Group ids from clustering each label's images into clusters of about `group_size`.

    Augmented copies of one cell look alike, so they fall in one cluster; clusters are
    coarser than the true photographs (harmless: it only makes validation stricter)
    but, unlike linking near neighbours, never chain half a class into one group.
    Descriptors are centred and compared by cosine similarity. Labels never share a group.
    """
    rng = np.random.default_rng(seed)
    centred = descriptors - descriptors.mean(axis=0)
    unit = centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-12)
    groups = np.full(len(labels), -1)
    next_id = 0
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        k = max(min(len(idx), 2), round(len(idx) / group_size))  # at least two groups to split
        local = _spherical_kmeans(unit[idx], k, rng)
        groups[idx] = next_id + local
        next_id += local.max() + 1
    return groups


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
