"""Latent normalisation z_n = (z - mean) * scale, shared by S_real, S_fake and the downstream model.

Choice: ONE scalar mean and ONE scalar scale = 1 / std over all coordinates (as the reference
code's `latent_mean`, `latent_scale`), measured on samples of the reference prior p_r before the
teacher is trained. Why scalar: an affine map with a single scale keeps the relative scale of the
channels, which is part of the distribution being matched; per-channel statistics would reshape
p_r before S_real sees it (the feature priors are already standardised per channel, so there
the two choices coincide). Why measured on p_r: the DM stage pushes q(z) onto p_r in the space
S_real knows, so the encoder's latents go through the same map, and after the stage they share
its statistics. The vae baseline (no S_real) measures it on its own encoder's latents.

The record travels with every checkpoint (`to_dict()` goes into the JSON sidecar).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LatentNorm:
    """z_n = (z - mean) * scale; `measured_on` says which latents gave the numbers."""

    mean: float = 0.0
    scale: float = 1.0
    measured_on: str = "identity"
    n: int = 0

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) * self.scale

    def invert(self, z_n: torch.Tensor) -> torch.Tensor:
        return z_n / self.scale + self.mean

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": "scalar", "formula": "z_n = (z - mean) * scale"}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentNorm":
        return cls(mean=float(d["mean"]), scale=float(d["scale"]), measured_on=d.get("measured_on", ""),
                   n=int(d.get("n", 0)))


def measure_norm(z: torch.Tensor, measured_on: str) -> LatentNorm:
    """Scalar mean and 1 / std of latents z (N, C, h, w), in float64."""
    z = z.double()
    std = z.std().item()
    if not std > 0 or not torch.isfinite(z).all():
        raise ValueError(f"cannot normalise latents of {measured_on}: std {std}, all finite "
                         f"{bool(torch.isfinite(z).all())}")
    return LatentNorm(mean=z.mean().item(), scale=1.0 / std, measured_on=measured_on, n=len(z))
