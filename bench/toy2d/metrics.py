"""Distances between a 2D point cloud and a target, measured against fresh target samples.

- sliced_w2: sqrt of the mean over random unit directions of the 1D W2^2 between projections;
  the reference's quantiles are taken at the points' quantile levels, so sizes may differ.
- energy_distance: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely), a proper metric on distributions.
- coverage: share of the target's bins that receive at least `min_share` of the points the
  target itself puts there. Bins are the Voronoi cells of anchors evenly spaced by arc length
  along the target's skeleton (k-means centres when it has none). Only points inside the support
  count, so a bin cannot be "covered" by stray points.
- outside_share: share of points whose distance to the nearest reference point exceeds the 99th
  percentile of that distance for held-out target samples (so the target itself scores ~0.01).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MetricSettings:
    n_ref: int = 8192
    n_directions: int = 256
    n_bins: int = 48
    min_share: float = 0.25
    support_quantile: float = 0.99
    seed: int = 1234


class ToyEvaluator:
    """Holds fresh target samples and the bins, then scores point clouds."""

    def __init__(self, target, settings: MetricSettings = MetricSettings()):
        self.s = settings
        g = torch.Generator().manual_seed(settings.seed)
        self.ref = target(settings.n_ref, g).double()                        # (R, 2)
        held_out = target(settings.n_ref // 4, g).double()
        self.directions = _unit_directions(settings.n_directions, g)         # (L, 2)
        self.threshold = torch.quantile(_nn_dist(held_out, self.ref), settings.support_quantile)
        if hasattr(target, "skeleton"):
            self.anchors = target.skeleton(settings.n_bins).double()
            self.bins = "arc-length bins along the target's skeleton"
        else:
            self.anchors = _kmeans(self.ref, settings.n_bins, g)
            self.bins = "k-means cells of the reference sample"
        ref_bins = _assign(self.ref, self.anchors)
        self.ref_share = torch.bincount(ref_bins, minlength=settings.n_bins).double() / len(self.ref)

    def settings(self) -> dict:
        """The evaluation settings, for provenance next to the numbers."""
        return {**self.s.__dict__, "bins": self.bins,
                "support_threshold": round(self.threshold.item(), 5)}

    def __call__(self, points: torch.Tensor) -> dict:
        p = points.detach().double()
        if not torch.isfinite(p).all():
            raise ValueError("point cloud holds non-finite values")
        inside = _nn_dist(p, self.ref) <= self.threshold
        counts = torch.bincount(_assign(p[inside], self.anchors), minlength=self.s.n_bins).double()
        expected = self.ref_share * len(p)
        covered = (counts >= self.s.min_share * expected) & (self.ref_share > 0)
        return {
            "sliced_w2": sliced_w2(p, self.ref, self.directions),
            "energy_distance": energy_distance(p, self.ref),
            "coverage": covered.sum().item() / (self.ref_share > 0).sum().item(),
            "outside_share": 1.0 - inside.double().mean().item(),
        }


def sliced_w2(x: torch.Tensor, ref: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced Wasserstein-2 between samples x (N, 2) and ref (R, 2) over given unit directions."""
    px = (x @ directions.T).sort(dim=0).values                               # (N, L)
    levels = (torch.arange(len(x), dtype=x.dtype) + 0.5) / len(x)
    pr = torch.quantile((ref @ directions.T), levels, dim=0)                 # (N, L)
    return (px - pr).pow(2).mean().sqrt().item()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance (V-statistics), >= 0 and 0 iff the distributions agree."""
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return (2 * xy - xx - yy).item()


def _unit_directions(n: int, g: torch.Generator) -> torch.Tensor:
    d = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def _nn_dist(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Distance of each row of x to its nearest neighbour in ref, in chunks to bound memory."""
    return torch.cat([torch.cdist(c, ref).min(dim=1).values for c in x.split(2048)])


def _assign(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cdist(x, anchors).argmin(dim=1)


def _kmeans(x: torch.Tensor, k: int, g: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Plain Lloyd iterations from a seeded random init; enough for fixed evaluation bins."""
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        a = _assign(x, centres)
        for j in range(k):
            if (a == j).any():
                centres[j] = x[a == j].mean(0)
    return centres
