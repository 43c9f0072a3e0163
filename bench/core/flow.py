"""Flow matching on a linear path: the ONE time convention of this suite, and its samplers.

Convention (the DMVAE reference code's, written down here once and converted nowhere else):

    z_t = t * x + (1 - t) * eps,      t in [0, 1],  t = 1 is clean data, t = 0 is pure noise
    v   = dz_t/dt = x - eps           (the network predicts v: "velocity prediction")

From a velocity prediction v at (z_t, t):
    data prediction   x_hat   = z_t + (1 - t) * v
    noise prediction  eps_hat = z_t - t * v
    score             grad log p_t(z_t) = -eps_hat / (1 - t)

Sampling integrates dz/dt = v from t = 0 (noise) to t = 1 (data).

Every network here is called as net(z, t, y) -> v with z (B, ...), t (B,) float in [0, 1] and
y (B,) long class labels, where y == net.num_classes is the "null" label (unconditional branch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.core import noise as rng


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = t x + (1 - t) eps, with t (B,) broadcast over the remaining dims."""
    tb = _bcast(t, x)
    return tb * x + (1 - tb) * eps


def velocity_target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regression target of flow matching on the linear path."""
    return x - eps


def data_from_velocity(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_hat = z_t + (1 - t) v."""
    return z_t + (1 - _bcast(t, z_t)) * v


def noise_from_velocity(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_hat = z_t - t v."""
    return z_t - _bcast(t, z_t) * v


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


# --------------------------------------------------------------------------------------------
# Time sampling
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeSampler:
    """t ~ U[t0, t1], optionally shifted towards noise (shift > 1) as in SD3's timestep shift.

    The shift acts on the noise level sigma = 1 - t: sigma' = s sigma / (1 + (s - 1) sigma).
    """

    t0: float = 0.0
    t1: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        if not (0.0 <= self.t0 < self.t1 <= 1.0):
            raise ValueError(f"time range needs 0 <= t0 < t1 <= 1, got [{self.t0}, {self.t1}]")
        if self.shift <= 0:
            raise ValueError(f"time shift must be > 0, got {self.shift}")

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = rng.rand((n,), generator, device)
        return shift_time(self.t0 + (self.t1 - self.t0) * u, self.shift)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the timestep shift to t (t = 1 clean); shift = 1 is the identity."""
    if shift == 1.0:
        return t
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


# --------------------------------------------------------------------------------------------
# Training loss and label dropout
# --------------------------------------------------------------------------------------------
def drop_labels(y: torch.Tensor, p: float, null_label: int, generator=None) -> torch.Tensor:
    """Replace each label by the null label with probability p (trains the unconditional branch)."""
    if p <= 0:
        return y
    drop = rng.rand(y.shape, generator, y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def flow_matching_loss(net, x, y, time_sampler: TimeSampler, label_dropout: float = 0.0,
                       generator=None) -> torch.Tensor:
    """Mean squared error between net(z_t, t, y) and the velocity x - eps."""
    t = time_sampler(x.shape[0], generator=generator, device=x.device)
    eps = rng.randn(x.shape, generator, x.device, x.dtype)
    z_t = interpolate(x, eps, t)
    y = drop_labels(y, label_dropout, net.num_classes, generator=generator)
    return (net(z_t, t, y) - velocity_target(x, eps)).pow(2).mean()


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------
def guided_velocity(net, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: float = 1.0):
    """v_u + w (v_c - v_u); with w == 1 this is exactly the conditional prediction (one call)."""
    if cfg == 1.0:
        return net(z, t, y)
    null = torch.full_like(y, net.num_classes)
    v = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]))
    v_c, v_u = v.chunk(2)
    return v_u + cfg * (v_c - v_u)


def guided_data_prediction(net, z_t, t, y, cfg: float = 1.0) -> torch.Tensor:
    """Data prediction x_hat(z_t) of a velocity net, with CFG weight cfg."""
    return data_from_velocity(z_t, guided_velocity(net, z_t, t, y, cfg), t)


# --------------------------------------------------------------------------------------------
# Samplers: t goes from 0 (noise) to 1 (data)
# --------------------------------------------------------------------------------------------
def time_grid(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """steps + 1 increasing times from 0 to 1, optionally shifted (more steps near noise if > 1)."""
    return shift_time(torch.linspace(0.0, 1.0, steps + 1, device=device), shift)


@torch.no_grad()
def sample_ode(net, noise, y, steps: int = 50, cfg: float = 1.0, shift: float = 1.0):
    """Euler integration of dz/dt = v from z_0 = noise to t = 1."""
    z = noise
    ts = time_grid(steps, shift, noise.device)
    for i in range(steps):
        t = ts[i].expand(z.shape[0])
        z = z + (ts[i + 1] - ts[i]) * guided_velocity(net, z, t, y, cfg)
    return z


@torch.no_grad()
def sample_sde(net, noise, y, steps: int = 50, cfg: float = 1.0, shift: float = 1.0,
               churn: float = 1.0, generator=None):
    """Euler-Maruyama on dz = [v + (g^2/2) score] dt + g dW with g^2 = 2 churn (1 - t).

    Adding the Langevin pair (g^2/2) score dt + g dW to the probability-flow ODE leaves the
    marginals p_t unchanged for any g; with score = -eps_hat / (1 - t) the drift is
    v - churn * eps_hat. The last step is a plain Euler step (no noise is injected at t -> 1).
    """
    z = noise
    ts = time_grid(steps, shift, noise.device)
    for i in range(steps):
        t = ts[i].expand(z.shape[0])
        dt = ts[i + 1] - ts[i]
        v = guided_velocity(net, z, t, y, cfg)
        if i == steps - 1:
            z = z + dt * v
            break
        drift = v - churn * noise_from_velocity(z, v, t)
        g = math.sqrt(2 * churn * (1 - ts[i].item()))
        z = z + dt * drift + g * dt.sqrt() * torch.randn(z.shape, generator=generator,
                                                          device=z.device, dtype=z.dtype)
    return z
