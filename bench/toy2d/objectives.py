"""The objectives the toy compares, each a loss on the learnable points z (N, 2).

All share one noised sample per step: t ~ TimeSampler, eps ~ N(0, I), z_t = t z + (1 - t) eps,
and are written with the nets' data predictions x_real(z_t), x_fake(z_t) (see core/flow.py).
- dm:         the DMVAE update (core/dm.py): move along s_real - s_fake.
- real_score: follow the real score alone: z is pulled to x_real(z_t). Equivalent to dm with
              S_fake replaced by the denoiser of a point mass at z; mode-seeking.
- fake_score: follow the fake score alone: z is pulled to x_fake(z_t); contracts q onto itself.
- score_diff: minimise ||x_fake(z_t) - x_real(z_t)||^2 by back-propagating through both nets
              into z (the score difference, up to a per-t weight, minimised directly).
- loss_diff:  minimise the real net's flow-matching loss on z minus the fake net's, back-
              propagating through both nets and the target z - eps.
Only z receives gradients here; the score nets' parameters are never updated by these losses.
"""
from __future__ import annotations

import torch

from bench.core.dm import dm_direction, surrogate_loss
from bench.core.flow import guided_data_prediction, guided_velocity, interpolate, velocity_target
from bench.errors import unknown

OBJECTIVES = ("dm", "real_score", "fake_score", "score_diff", "loss_diff")


def check_objectives(names) -> tuple[str, ...]:
    """Validate a list of objective names."""
    for n in names:
        if n not in OBJECTIVES:
            raise unknown("objective", n, OBJECTIVES)
    return tuple(names)


def objective_loss(name: str, real, fake, z, y, t, eps, cfg: float = 1.0) -> torch.Tensor:
    """The loss whose gradient w.r.t. the points z is the objective's update direction."""
    if name == "dm":
        return surrogate_loss(z, dm_direction(real, fake, z.detach(), y, t, eps, cfg))
    if name in ("real_score", "fake_score"):
        net = real if name == "real_score" else fake
        with torch.no_grad():
            z_t = interpolate(z, eps, t)
            x_hat = guided_data_prediction(net, z_t, t, y, cfg)
            norm = (z - x_hat).abs().mean(1, keepdim=True).clamp_min(1e-6)
        return surrogate_loss(z, (z.detach() - x_hat) / norm)
    z_t = interpolate(z, eps, t)
    if name == "score_diff":
        diff = guided_data_prediction(fake, z_t, t, y, cfg) - guided_data_prediction(real, z_t, t, y, cfg)
        return diff.pow(2).sum(1).mean()
    if name == "loss_diff":
        target = velocity_target(z, eps)
        l_real = (guided_velocity(real, z_t, t, y, cfg) - target).pow(2).sum(1)
        l_fake = (guided_velocity(fake, z_t, t, y, cfg) - target).pow(2).sum(1)
        return (l_real - l_fake).mean()
    raise unknown("objective", name, OBJECTIVES)
