"""The distribution-matching (DMD) update of docs/method.md section 2, step 3.

Given latents z = E(x) and two frozen-for-this-step velocity nets, S_real (trained on the
reference prior p_r) and S_fake (trained on the current q(z)), the encoder receives

    g = (x_fake - x_real) / mean_per_sample(|z - x_real|)
    loss_DM = 0.5 * mean((z - sg(z - g))^2)        so that  d loss_DM / d z = g / z.numel()

i.e. z moves towards the real net's denoising of z_t and away from the fake net's, which is a
step along s_real - s_fake (the KL gradient of DMD). No gradient flows through either net.
"""
from __future__ import annotations

import torch

from bench.core import noise as rng
from bench.core.flow import TimeSampler, guided_data_prediction, interpolate

NORM_EPS = 1e-6  # guards the DMD normalisation when x_real already equals z


@torch.no_grad()
def dm_direction(real, fake, z, y, t, eps, cfg: float = 1.0) -> torch.Tensor:
    """The normalised DM direction g for latents z (B, ...) at times t (B,) and noise eps."""
    z_t = interpolate(z, eps, t)
    x_real = guided_data_prediction(real, z_t, t, y, cfg)  # CFG on BOTH nets when cfg != 1
    x_fake = guided_data_prediction(fake, z_t, t, y, cfg)
    norm = (z - x_real).abs().flatten(1).mean(1).clamp_min(NORM_EPS)  # (B,)
    return (x_fake - x_real) / norm.reshape(-1, *([1] * (z.dim() - 1)))


def surrogate_loss(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((z - sg(z - g))^2): a loss whose gradient w.r.t. z is g / z.numel()."""
    return 0.5 * (z - (z - g).detach()).pow(2).mean()


def dm_loss(real, fake, z, y, time_sampler: TimeSampler, cfg: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The DM loss for latents z that carry grad (encoder outputs, or learnable points)."""
    t = time_sampler(z.shape[0], generator=generator, device=z.device)
    eps = rng.randn(z.shape, generator, z.device, z.dtype)
    g = dm_direction(real, fake, z.detach(), y, t, eps, cfg)
    return surrogate_loss(z, g)
