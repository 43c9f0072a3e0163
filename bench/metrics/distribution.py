"""Distances between latent sets in the flattened latent space (the primitives of matching.py).

- mmd2: unbiased MMD^2 with a Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 s^2)); s is the
  median pairwise distance of a fixed-seed subsample of the *reference* set, so every model scored
  against the same reference uses the same kernel.
- sliced_w2: sqrt of the mean over fixed-seed random unit directions of the exact 1-D W2^2 between
  the projected empirical distributions (sizes may differ).
Both are float64 sums over chunks, so the chunk size does not change the value.
"""
from __future__ import annotations

import torch

SETTINGS = dict(bandwidth="median pairwise distance of the reference (first argument)",
                bandwidth_subsample=1000, n_projections=256, space="flattened latents, no standardisation")


def _flat(x) -> torch.Tensor:
    return torch.as_tensor(x).flatten(1).double()


def median_bandwidth(ref, seed: int = 0, n: int = SETTINGS["bandwidth_subsample"]) -> float:
    """Median pairwise euclidean distance over a fixed-seed subsample of at most n reference rows."""
    r = _flat(ref)
    r = r[torch.randperm(len(r), generator=torch.Generator().manual_seed(seed))[:n]]
    i, j = torch.triu_indices(len(r), len(r), offset=1)
    return float(torch.cdist(r, r)[i, j].median())


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, bandwidth: float, chunk: int) -> float:
    """sum_ij exp(-||a_i - b_j||^2 / (2 s^2)) in float64, chunked over rows of a."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(a), chunk):
        d2 = torch.cdist(a[i:i + chunk], b).pow(2)  # (chunk, len(b))
        total += torch.exp(-d2 / (2 * bandwidth ** 2)).sum()
    return float(total)


def mmd2(ref, x, bandwidth: float | None = None, seed: int = 0, chunk: int = 1024) -> float:
    """Unbiased MMD^2 between reference latents (N, ...) and latents (M, ...), Gaussian kernel."""
    r, y = _flat(ref), _flat(x)
    n, m = len(r), len(y)
    if min(n, m) < 2:
        raise ValueError("MMD needs at least 2 samples per set")
    s = bandwidth if bandwidth is not None else median_bandwidth(r, seed)
    # k(a, a) = 1 exactly, so the unbiased within-set sums drop n (resp. m) from the full sums.
    krr = (_kernel_sum(r, r, s, chunk) - n) / (n * (n - 1))
    kyy = (_kernel_sum(y, y, s, chunk) - m) / (m * (m - 1))
    kry = _kernel_sum(r, y, s, chunk) / (n * m)
    return krr + kyy - 2 * kry


def _directions(dim: int, n: int, seed: int) -> torch.Tensor:
    """(dim, n) unit vectors, uniform on the sphere, from a fixed seed."""
    d = torch.randn(dim, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm(dim=0, keepdim=True)


def _w2_sq_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 per column between sorted samples a (N, L) and b (M, L): integral of the quantile gap."""
    n, m = len(a), len(b)
    # Breakpoints of both empirical quantile functions; on each piece both are constant.
    t = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()  # sorted, ends at 1
    w = torch.diff(t, prepend=torch.zeros(1, dtype=torch.float64))
    mid = t - w / 2
    ia = (mid * n).floor().long().clamp(max=n - 1)
    ib = (mid * m).floor().long().clamp(max=m - 1)
    return (w[:, None] * (a[ia] - b[ib]).pow(2)).sum(0)  # (L,)


def sliced_w2(ref, x, n_projections: int = SETTINGS["n_projections"], seed: int = 0, chunk: int = 4096) -> float:
    """Sliced Wasserstein-2 between reference latents (N, ...) and latents (M, ...)."""
    r, y = _flat(ref), _flat(x)
    if r.shape[1] != y.shape[1]:
        raise ValueError(f"latent sizes differ: {tuple(r.shape[1:])} vs {tuple(y.shape[1:])}")
    dirs = _directions(r.shape[1], n_projections, seed)
    proj = [torch.cat([f[i:i + chunk] @ dirs for i in range(0, len(f), chunk)]).sort(0).values for f in (r, y)]
    return float(_w2_sq_1d(*proj).mean().sqrt())
