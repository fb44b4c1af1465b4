"""Out-of-distribution guard: Mahalanobis distance of a crop's colour statistics to each training laboratory's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GuardRegion:
    """The colour statistics of one laboratory's training crops and the largest distance still usual there."""

    mean: np.ndarray
    inv_cov: np.ndarray
    max_distance: float
    source: str = ""

    def distance(self, stats: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of one or many statistics vectors."""
        d = np.atleast_2d(stats) - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.inv_cov, d))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mean": self.mean.round(6).tolist(), "inv_cov": self.inv_cov.round(8).tolist(),
                "max_distance": round(self.max_distance, 4)}


@dataclass(frozen=True)
class ColourGuard:
    """One region per training laboratory: a crop is usual when it lies inside any of them.

    Laboratories stain differently, so one ellipsoid around two labs' crops would also accept the
    colours between and around them.
    """

    regions: tuple[GuardRegion, ...]

    @classmethod
    def fit(cls, stats: np.ndarray, reference: np.ndarray, quantile: float = 0.999, source: str = "") -> "ColourGuard":
        """One region fitted on training-crop statistics; its limit is the `quantile` of distances on `reference`."""
        mean = stats.mean(axis=0)
        cov = np.cov(stats, rowvar=False) + 1e-6 * np.eye(stats.shape[1])
        region = GuardRegion(mean, np.linalg.inv(cov), 0.0, source)
        limit = float(np.quantile(region.distance(reference), quantile))
        return cls((GuardRegion(mean, region.inv_cov, limit, source),))

    @classmethod
    def fit_sources(cls, by_source: dict[str, tuple[np.ndarray, np.ndarray]], quantile: float = 0.999) -> "ColourGuard":
        """One region per source from {source: (training statistics, reference statistics)}."""
        return cls(tuple(cls.fit(train, ref, quantile, source).regions[0] for source, (train, ref) in by_source.items()))

    def distance(self, stats: np.ndarray) -> np.ndarray:
        """Distance to the nearest region, in units of that region's limit: above 1 is unusual."""
        return np.min([region.distance(stats) / region.max_distance for region in self.regions], axis=0)

    def is_unusual(self, stats: np.ndarray) -> bool:
        return bool(self.distance(stats)[0] > 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "colour-mahalanobis", "regions": [region.to_dict() for region in self.regions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ColourGuard | None":
        if not data:
            return None
        regions = data.get("regions", [data])  # models before per-laboratory regions hold one, at the top level
        return cls(tuple(GuardRegion(np.asarray(r["mean"], float), np.asarray(r["inv_cov"], float),
                                     float(r["max_distance"]), r.get("source", "")) for r in regions))
