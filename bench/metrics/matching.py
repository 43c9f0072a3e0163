"""Has a latent set reached the reference distribution p_r? Statistics beside their floor, and a stated rule.

Every statistic is measured once against one fixed reference sample of p_r, with one kernel bandwidth
and one seed, so "before", "after" and the floor (the same statistic between two independent draws of
p_r of the same size) are directly comparable:

- mmd2: biased (V-statistic) MMD^2, Gaussian kernel, bandwidth fixed on the reference (median heuristic);
- sliced_w2: distribution.sliced_w2 with the fixed seed;
- c2st_acc: held-out accuracy of a small MLP telling reference (label 0) from latents (label 1);
  0.5 = indistinguishable.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from bench.metrics.distribution import SETTINGS as _DIST, _flat, _kernel_sum, median_bandwidth, sliced_w2

__all__ = ["RULE", "SETTINGS", "Matcher", "reached"]

FACTOR, SHRINK = 3.0, 0.3
_RULE = ("reached if MMD^2 after <= {factor:g} x floor (floor: MMD^2 between two independent draws of p_r of "
         "the same size), or, when MMD^2 before was already above {factor:g} x floor, if MMD^2 after <= "
         "{shrink:g} x MMD^2 before")
RULE = _RULE.format(factor=FACTOR, shrink=SHRINK)

_HIDDEN, _MAX_ITER = (128,), 300
_MIN_N = 20  # the C2ST halves, and the 10% early-stopping split inside the train half, need a few rows per class

SETTINGS = dict(
    space=_DIST["space"],
    mmd2=dict(estimator="biased V-statistic (all pairs, i == j included)",
              kernel="gaussian exp(-||a - b||^2 / (2 s^2))",
              bandwidth="median pairwise distance of the Matcher's reference, fixed at construction",
              bandwidth_subsample=_DIST["bandwidth_subsample"]),
    sliced_w2=dict(n_projections=_DIST["n_projections"], directions="uniform on the sphere, Matcher seed"),
    c2st=dict(subsample="both sets to n = min(N, M) rows by a fixed-seed permutation",
              labels="reference 0, latents 1",
              standardise="pooled mean / std per coordinate of the 2n rows",
              split="stratified 50/50, Matcher seed; fit on one half, accuracy on the other",
              classifier="sklearn MLPClassifier", hidden_layer_sizes=list(_HIDDEN), max_iter=_MAX_ITER,
              early_stopping=True, random_state="Matcher seed"),
    rule=dict(text=RULE, factor=FACTOR, shrink=SHRINK, statistic="mmd2"),
)


class Matcher:
    """Scores latent sets against one fixed reference sample of p_r.

    ref: (N, C, h, w) (any (N, ...) works) draws of p_r. The kernel bandwidth (median heuristic on ref)
    and the seed (projections, C2ST subsample / split / initialisation) are fixed here, so stats(before),
    stats(after) and floor(ref_b) all use the same kernel and projections.
    """

    def __init__(self, ref: torch.Tensor, seed: int = 0):
        self.ref = _flat(ref)  # (N, D) float64
        self.shape = tuple(torch.as_tensor(ref).shape[1:])
        if len(self.ref) < _MIN_N:
            raise ValueError(f"need at least {_MIN_N} reference rows, got {len(self.ref)}")
        self.seed = seed
        self.bandwidth = median_bandwidth(self.ref, seed)
        # The reference never changes: its kernel mean is computed once.
        self._k_rr = _kernel_sum(self.ref, self.ref, self.bandwidth, 1024) / len(self.ref) ** 2

    def _check(self, x) -> torch.Tensor:
        """x flattened to (M, D) float64, after checking its per-latent shape and size."""
        shape = tuple(torch.as_tensor(x).shape[1:])
        if shape != self.shape:
            raise ValueError(f"latent shape {shape} differs from the reference's {self.shape}")
        y = _flat(x)
        if len(y) < _MIN_N:
            raise ValueError(f"need at least {_MIN_N} latents, got {len(y)}")
        return y

    def mmd2(self, y: torch.Tensor) -> float:
        """Biased (V-statistic) MMD^2 of flattened latents y (M, D) against the reference.

        mean k(r, r') + mean k(y, y') - 2 mean k(r, y) over all pairs, i == j included. The unbiased
        estimator is centred on 0 for equal distributions and goes negative, so "3 x floor" would mean
        nothing; the V-statistic is >= 0 and its floor (two draws of p_r) is positive and shrinks with N.
        """
        k_yy = _kernel_sum(y, y, self.bandwidth, 1024) / len(y) ** 2
        k_ry = _kernel_sum(self.ref, y, self.bandwidth, 1024) / (len(self.ref) * len(y))
        return max(self._k_rr + k_yy - 2 * k_ry, 0.0)  # >= 0 in exact arithmetic; clip float round-off

    def c2st(self, y: torch.Tensor) -> float:
        """Held-out accuracy of an MLP separating reference (0) from latents y (1); 0.5 = indistinguishable."""
        gen = torch.Generator().manual_seed(self.seed)
        n = min(len(self.ref), len(y))
        r = self.ref[torch.randperm(len(self.ref), generator=gen)[:n]]
        y = y[torch.randperm(len(y), generator=gen)[:n]]
        feats = torch.cat([r, y])  # (2n, D)
        # Pooled standardisation: the classifier sees no scale difference it could not also see in the data.
        feats = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-12)
        labels = np.repeat([0, 1], n)
        a_tr, a_te, l_tr, l_te = train_test_split(feats.numpy(), labels, test_size=0.5, stratify=labels,
                                                  random_state=self.seed)
        clf = MLPClassifier(hidden_layer_sizes=_HIDDEN, max_iter=_MAX_ITER, early_stopping=True,
                            random_state=self.seed)
        with warnings.catch_warnings():
            # Hitting max_iter is fine here: an under-trained classifier only errs towards 0.5.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(a_tr, l_tr)
        return float(clf.score(a_te, l_te))

    def stats(self, x: torch.Tensor, c2st: bool = True) -> dict:
        """MMD^2, sliced W2 and C2ST accuracy of latents x (M, C, h, w) against the reference.

        Returns {"mmd2": float, "sliced_w2": float, "c2st_acc": float, "n_ref": int, "n": int};
        c2st=False leaves out the classifier (the cheap probe of the DM stage's curve).
        """
        y = self._check(x)
        out = {"mmd2": self.mmd2(y), "sliced_w2": sliced_w2(self.ref, y, seed=self.seed)}
        if c2st:
            out["c2st_acc"] = self.c2st(y)
        return {**out, "n_ref": len(self.ref), "n": len(y)}

    def floor(self, ref_b: torch.Tensor) -> dict:
        """stats(ref_b) for an independent second draw ref_b of p_r, of the same size as the reference.

        The floor is what the statistics read when the latents *are* p_r; it depends on the sample
        size, hence the size check.
        """
        if len(ref_b) != len(self.ref):
            raise ValueError(f"floor needs a second draw of the reference size {len(self.ref)}, got {len(ref_b)}")
        return self.stats(ref_b)


def reached(before: dict, after: dict, floor: dict, factor: float = FACTOR, shrink: float = SHRINK) -> dict:
    """Applies the rule to stats() dicts (only their "mmd2" is read).

    started_at_prior = MMD^2 before <= factor x floor. If so, reached = MMD^2 after <= factor x floor;
    otherwise reached = MMD^2 after <= max(factor x floor, shrink x MMD^2 before). Both bounds inclusive.
    Returns {"reached": bool, "rule": str, "started_at_prior": bool, "threshold": float}; "rule" is RULE
    for the default factor and shrink.
    """
    at_floor = factor * floor["mmd2"]
    started = before["mmd2"] <= at_floor
    threshold = at_floor if started else max(at_floor, shrink * before["mmd2"])
    return {"reached": bool(after["mmd2"] <= threshold), "rule": _RULE.format(factor=factor, shrink=shrink),
            "started_at_prior": bool(started), "threshold": float(threshold)}
