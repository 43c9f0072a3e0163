"""The convolutional encoder and decoder of every autoencoder in the suite (LDM style, no attention).

Used by the DMVAE tokenizer (bench/dmvae/autoencoder.py) and by the KL-VAE behind the vae and noise
priors (bench/features/kl_vae.py). The encoder halves the side log2(down) times with stride-2 convs
between residual blocks; widths double per level up to 4x `width` (the cap keeps deep grids, such as
256 px -> 16, affordable); the decoder mirrors it with nearest upsampling. A variational encoder
outputs (mean, logvar) and its forward pass is the posterior mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, identity shortcut (LDM's ResnetBlock without time embedding)."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, 1, 1),
                                  group_norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def levels(down: int) -> int:
    """log2(down): the number of halvings between the image side and the latent side."""
    n = round(math.log2(down)) if down >= 1 else -1
    if n < 0 or 2 ** n != down:
        raise ValueError(f"the image side / latent side must be a power of 2, got {down}")
    return n


def widths(width: int, n_levels: int) -> list[int]:
    return [width * 2 ** min(i, 2) for i in range(n_levels + 1)]


class Encoder(nn.Module):
    """Images (B, c, R, R) -> latents (B, C, R/down, R/down)."""

    def __init__(self, in_ch: int, latent_ch: int, down: int, width: int, variational: bool = False):
        super().__init__()
        w = widths(width, levels(down))
        self.latent_ch, self.variational = latent_ch, variational
        layers = [nn.Conv2d(in_ch, w[0], 3, 1, 1)]
        for i in range(len(w) - 1):
            layers += [ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 3, 2, 1)]  # stride 2 halves R
        layers += [ResBlock(w[-1]), group_norm(w[-1]), nn.SiLU(),
                   nn.Conv2d(w[-1], latent_ch * (2 if variational else 1), 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of a variational encoder, each (B, C, h, w); logvar clamped as LDM does."""
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic latent (the posterior mean for a variational encoder)."""
        out = self.net(x)
        return out[:, :self.latent_ch] if self.variational else out


class Decoder(nn.Module):
    """Latents (B, C, h, w) -> images (B, c, h*up, w*up), unclamped."""

    def __init__(self, latent_ch: int, out_ch: int, up: int, width: int):
        super().__init__()
        w = widths(width, levels(up))
        layers = [nn.Conv2d(latent_ch, w[-1], 3, 1, 1), ResBlock(w[-1])]
        for i in reversed(range(len(w) - 1)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i + 1], w[i], 3, 1, 1),
                       ResBlock(w[i])]
        layers += [group_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], out_ch, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """The output conv's weight: where the adaptive GAN weight compares gradient norms."""
        return self.net[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
