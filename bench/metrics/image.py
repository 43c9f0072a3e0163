"""Pixel-space reconstruction metrics: PSNR and SSIM of images in [-1, 1], measured on the [0, 1] scale."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_SETTINGS = dict(window="gaussian 11x11, sigma 1.5", k1=0.01, k2=0.03, data_range=1.0,
                     padding="valid", channels="per channel, averaged")  # Wang et al. 2004


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images (N, C, H, W) in [-1, 1], on the [0, 1] scale."""
    mse = ((a.double() - b.double()) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of images (N, C, H, W) in [-1, 1] (float64, gaussian window, valid region)."""
    x, y = ((t.double() + 1) / 2 for t in (a, b))
    n, c, h, w = x.shape
    size = min(11, h, w)
    win = _window(size).expand(c, 1, size, size)
    blur = lambda t: F.conv2d(t, win, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (SSIM_SETTINGS["k1"] * SSIM_SETTINGS["data_range"]) ** 2, (SSIM_SETTINGS["k2"] * SSIM_SETTINGS["data_range"]) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean().item()
