"""Per-class FID: the Fréchet distance of one class's Inception features against the same class's
reference features, for every class.

At the sample sizes a per-class split leaves (N / K per class), FID is dominated by its bias, so a
per-class value only reads beside its floor: the same statistic between real images of that class
(another set, same count) and the same reference images. A class with fewer than two images on
either side has no covariance and so no FID: its value is None, never a made-up number.
"""
from __future__ import annotations

import torch

from bench.metrics.fid import frechet_distance_features

MIN_PER_CLASS = 2  # a covariance needs two samples


def class_fids(feats: torch.Tensor, labels: torch.Tensor, ref_feats: torch.Tensor, ref_labels: torch.Tensor,
               num_classes: int) -> list[float | None]:
    """FID of each class k in 0 .. num_classes - 1: feats[labels == k] against ref_feats[ref_labels == k]
    (feature form, exact for N below the feature dimension); None where either side has < 2 images."""
    out = []
    for k in range(num_classes):
        a, b = feats[labels == k], ref_feats[ref_labels == k]
        out.append(frechet_distance_features(a, b) if min(len(a), len(b)) >= MIN_PER_CLASS else None)
    return out


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """How many images of each class a labelled set holds."""
    return torch.bincount(labels.long(), minlength=num_classes).tolist()
