"""Out-of-distribution guard: Mahalanobis distance of a crop's colour statistics to the training crops'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ColourGuard:
    """Statistics of the training crops and the largest distance still considered usual."""

    mean: np.ndarray
    inv_cov: np.ndarray
    max_distance: float

    @classmethod
    def fit(cls, stats: np.ndarray, reference: np.ndarray, quantile: float = 0.999) -> "ColourGuard":
        """Fit on training-crop statistics; the limit is the `quantile` of distances on `reference` crops."""
        mean = stats.mean(axis=0)
        cov = np.cov(stats, rowvar=False) + 1e-6 * np.eye(stats.shape[1])
        guard = cls(mean, np.linalg.inv(cov), 0.0)
        limit = float(np.quantile(guard.distance(reference), quantile))
        return cls(mean, guard.inv_cov, limit)

    def distance(self, stats: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of one or many statistics vectors."""
        d = np.atleast_2d(stats) - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.inv_cov, d))

    def is_unusual(self, stats: np.ndarray) -> bool:
        return bool(self.distance(stats)[0] > self.max_distance)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "colour-mahalanobis", "mean": self.mean.round(6).tolist(),
                "inv_cov": self.inv_cov.round(8).tolist(), "max_distance": round(self.max_distance, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ColourGuard | None":
        if not data:
            return None
        return cls(np.asarray(data["mean"], float), np.asarray(data["inv_cov"], float), float(data["max_distance"]))
