"""2D target distributions for the toy: a registry of samplers, pluggable by `module:function`.

A target is any callable `f(n, generator) -> (n, 2)` float tensor. Targets that know their
one-dimensional skeleton also expose `f.skeleton(m) -> (m, 2)`, points evenly spaced by arc
length; the coverage metric uses it for arc-length bins (others fall back to k-means cells).
"""
from __future__ import annotations

import math

import torch

from bench.lookup import by_name

TARGETS: dict = {}


def register(name: str):
    """Decorator: add a target sampler under a unique name."""
    def deco(fn):
        if name in TARGETS:
            raise ValueError(f"target '{name}' registered twice")
        TARGETS[name] = fn
        return fn
    return deco


def get_target(name: str):
    """A registered target by name, or a user's callable given as `module:function`."""
    return by_name("target", name, TARGETS, "module:function", callable,
                   "the function f(n, generator) returns an (n, 2) tensor")


def _even_by_arclength(curve, m: int, dense: int = 4096) -> torch.Tensor:
    """m points along curve(s), s in [-1, 1], evenly spaced by arc length."""
    s = torch.linspace(-1, 1, dense, dtype=torch.float64)
    p = curve(s)
    seg = (p[1:] - p[:-1]).norm(dim=1)
    arc = torch.cat([torch.zeros(1, dtype=p.dtype), seg.cumsum(0)])
    want = torch.linspace(0, arc[-1].item(), m, dtype=p.dtype)
    idx = torch.searchsorted(arc, want).clamp(1, dense - 1)
    w = ((want - arc[idx - 1]) / (arc[idx] - arc[idx - 1]).clamp_min(1e-12)).unsqueeze(1)
    return ((1 - w) * p[idx - 1] + w * p[idx]).float()


# ---------------------------------------------------------------------------------------------
# The paper's S-shaped target (Fig. 3), as the paper draws it
# ---------------------------------------------------------------------------------------------
def _s_curve(s: torch.Tensor) -> torch.Tensor:
    x = 0.85 * torch.sin(math.pi * s)
    y = 0.85 * s - 0.15 * torch.sin(2 * math.pi * s)
    return torch.stack([x, -y], dim=1)  # y flipped


@register("s_curve")
def s_curve(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """S-shaped skeleton + normal noise (std 0.06) + isotropic noise (std 0.03 (0.4 + 0.6|s|))."""
    s = torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
    p = _s_curve(s)
    # unit normal of the (flipped) curve: rotate the tangent (dx/ds, -dy/ds) by 90 degrees
    dx = 0.85 * math.pi * torch.cos(math.pi * s)
    dy = -(0.85 - 0.3 * math.pi * torch.cos(2 * math.pi * s))
    normal = torch.stack([-dy, dx], dim=1) / torch.sqrt(dx**2 + dy**2).unsqueeze(1)
    across = 0.06 * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    iso = 0.03 * (0.4 + 0.6 * s.abs()).unsqueeze(1) * torch.randn(n, 2, generator=generator,
                                                                  dtype=torch.float64)
    return (p + across * normal + iso).clamp(-1, 1).float()


s_curve.skeleton = lambda m: _even_by_arclength(_s_curve, m)


# ---------------------------------------------------------------------------------------------
# Two more shapes, to check that conclusions are not specific to one target
# ---------------------------------------------------------------------------------------------
def _ring(s: torch.Tensor) -> torch.Tensor:
    return 0.75 * torch.stack([torch.cos(math.pi * s), torch.sin(math.pi * s)], dim=1)


@register("ring")
def ring(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A circle of radius 0.75 with normal noise of std 0.05."""
    s = torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
    r = 0.75 + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)
    return (r.unsqueeze(1) * torch.stack([torch.cos(math.pi * s), torch.sin(math.pi * s)], 1)).float()


ring.skeleton = lambda m: _even_by_arclength(_ring, m)


@register("eight_gaussians")
def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eight isotropic Gaussians (std 0.05) on a circle of radius 0.8: a multi-mode target."""
    k = torch.randint(0, 8, (n,), generator=generator)
    centres = 0.8 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return centres + 0.05 * torch.randn(n, 2, generator=generator)
