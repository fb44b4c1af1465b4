"""Recover which images are augmentations of the same photograph, and split by those groups.

TRAIN holds rotated/flipped/shifted copies of a few hundred cells. A validation split that
puts copies of one cell on both sides measures memory, not generalisation, so we link
near-duplicates (by rotation-averaged backbone features) and split whole groups.
"""
from __future__ import annotations

import numpy as np


def _union_find_groups(n: int, edges: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1]


def recover_groups(descriptors: np.ndarray, labels: np.ndarray, neighbours: int = 5,
                   min_similarity: float = 0.9) -> np.ndarray:
    """Group ids linking each image to its mutual nearest neighbours of the same label.

    Two images are linked when each is among the other's `neighbours` most similar
    (cosine) and their similarity is at least `min_similarity`; groups are the
    connected components. Different labels never share a group.
    """
    descriptors = descriptors / (np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-12)
    groups = np.full(len(labels), -1)
    next_id = 0
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        sim = descriptors[idx] @ descriptors[idx].T
        np.fill_diagonal(sim, -1.0)
        k = min(neighbours, len(idx) - 1)
        if k < 1:
            groups[idx] = next_id + np.arange(len(idx))
            next_id += len(idx)
            continue
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        is_near = np.zeros_like(sim, dtype=bool)
        np.put_along_axis(is_near, nearest, True, axis=1)
        linked = is_near & is_near.T & (sim >= min_similarity)
        edges = np.argwhere(np.triu(linked, 1))
        local = _union_find_groups(len(idx), edges)
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
