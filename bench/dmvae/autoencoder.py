"""The DMVAE tokenizer: conv encoder/decoder, and its reconstruction loss (docs/method.md section 2.1).

L_rec = L1 + l2_weight * MSE + adaptive GAN term, the GAN a hinge PatchGAN that sees both real and
reconstructed images through the same differentiable augmentation (random flip + translation).
LPIPS is part of the paper's loss, but its (VGG + linear) weights are not available offline, so it
never runs here; `loss_terms()` records which terms ran, for the run's provenance.

Adaptive GAN weight (Esser et al. 2021, as in LDM/DMVAE):
    w = disc_weight * ||grad_{W_last} L_rec|| / (||grad_{W_last} L_gan|| + 1e-4),  clamped to [0, 1e4]
with W_last the decoder's output conv and disc_weight = 0.5 (docs/method.md).

Architecture (widths double at each of the log2(down) halvings, capped at 4x):
    Encoder  (c, R, R) -> conv -> [ResBlock, stride-2 conv] x log2(down) -> ResBlock -> norm/SiLU/conv -> (C, h, w)
    Decoder  (C, h, w) -> conv -> ResBlock -> [nearest x2, conv, ResBlock] x log2(down) -> norm/SiLU/conv -> (c, R, R)
A `variational` encoder emits (mean, logvar) for the KL baseline; the DMVAE encoder is deterministic.

| preset | width | disc width / layers | gan start (step) |
|---|---|---|---|
| smoke | 8  | 8 / 2  | 0 |
| cpu   | 16 | 32 / 2 | 0 |
| gpu   | 64 | 64 / 3 | 0 |
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import distributed as D
from bench.config import require
from bench.core import noise as rng
from bench.core.conv import Decoder, Encoder, group_norm

LPIPS_STATUS = ("unavailable: no weights (LPIPS needs torchvision's VGG16 weights, not available offline; "
                "run without it, docs/method.md 2.1)")


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture and reconstruction loss of the tokenizer."""

    width: int = 16             # encoder/decoder channels at full resolution
    l2_weight: float = 1.0      # L1 + l2_weight * MSE
    gan_weight: float = 0.5     # the adaptive weight's factor (docs/method.md: 0.5); 0 disables the GAN
    gan_start: int = 0          # step from which the generator sees the GAN term and D trains
    disc_width: int = 32
    disc_layers: int = 2        # stride-2 conv layers of the PatchGAN
    disc_lr: float = 2e-4
    augment_shift: float = 0.125  # max translation as a fraction of the image side

    def __post_init__(self):
        require(self, positive=("width", "disc_width", "disc_layers", "disc_lr"),
                non_negative=("l2_weight", "gan_weight", "gan_start"), fraction=("augment_shift",))


TOKENIZER_PRESETS = {
    "smoke": TokenizerConfig(width=8, disc_width=8),
    "cpu": TokenizerConfig(),
    "gpu": TokenizerConfig(width=64, disc_width=64, disc_layers=3),
}


def build_tokenizer(image_shape: tuple[int, int, int], latent_shape: tuple[int, int, int],
                    cfg: TokenizerConfig, variational: bool = False) -> tuple[Encoder, Decoder]:
    """Encoder and decoder between images (c, R, R) and latents (C, h, h); R / h a power of 2."""
    (c, r, _), (ch, h, _) = image_shape, latent_shape
    if r % h:
        raise ValueError(f"image side {r} is not a multiple of the latent side {h}")
    return Encoder(c, ch, r // h, cfg.width, variational), Decoder(ch, c, r // h, cfg.width)


# --------------------------------------------------------------------------------------------
# PatchGAN discriminator and its augmentation
# --------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """Hinge PatchGAN (pix2pix): stride-2 4x4 convs, then a 1-channel map of per-patch logits."""

    def __init__(self, in_ch: int, width: int, layers: int):
        super().__init__()
        mods, ch = [nn.Conv2d(in_ch, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for i in range(1, layers):
            nxt = width * 2 ** min(i, 3)
            mods += [nn.Conv2d(ch, nxt, 4, 2, 1), group_norm(nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods += [nn.Conv2d(ch, ch, 3, 1, 1), group_norm(ch), nn.LeakyReLU(0.2), nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, R / 2^layers, R / 2^layers)


def augment(x: torch.Tensor, max_shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable per-sample random horizontal flip and integer translation (zero fill)."""
    b, _, r, _ = x.shape
    flip = rng.rand((b,), generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    s = int(max_shift * r)
    if s == 0:
        return x
    shift = rng.randint(-s, s + 1, (b, 2), generator).to(x)  # pixels (dx, dy)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = 2 * shift / r  # grid units: the side is 2 wide; integer shifts sample exactly
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------------------------
# The reconstruction loss
# --------------------------------------------------------------------------------------------
class ReconstructionLoss(nn.Module):
    """L1 + L2 + adaptive hinge-GAN term; holds the discriminator (trained by the caller's optimiser)."""

    def __init__(self, image_channels: int, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.disc = (PatchDiscriminator(image_channels, cfg.disc_width, cfg.disc_layers)
                     if cfg.gan_weight > 0 else None)

    def loss_terms(self) -> dict:
        """Which terms of the paper's L_rec ran: the record for provenance."""
        return {"l1": True, "l2": self.cfg.l2_weight > 0, "gan": self.disc is not None,
                "lpips": LPIPS_STATUS}

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan_start

    def generator_loss(self, x, rec, last_layer, step: int, generator=None) -> tuple[torch.Tensor, dict]:
        """L_rec for the encoder/decoder, and its parts as floats (generator: the augmentation's noise)."""
        l1, l2 = (rec - x).abs().mean(), (rec - x).pow(2).mean()
        loss = l1 + self.cfg.l2_weight * l2
        logs = {"l1": l1.item(), "l2": l2.item()}
        if self.gan_active(step):
            self.disc.requires_grad_(False)  # D is a fixed critic for this loss
            gan = -self.disc(augment(rec, self.cfg.augment_shift, generator)).mean()
            self.disc.requires_grad_(True)
            w = self.adaptive_weight(loss, gan, last_layer)
            loss = loss + w * gan
            logs.update(gan=gan.item(), gan_weight=w.item())
        return loss, logs

    def adaptive_weight(self, rec_loss, gan_loss, last_layer) -> torch.Tensor:
        """0.5 * ||d rec / d W_last|| / ||d gan / d W_last|| (a constant: no grad through it)."""
        g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
        # under data parallelism: the norms of the GLOBAL batch's gradients, as with one process
        g_rec, g_gan = D.all_reduce_mean(g_rec), D.all_reduce_mean(g_gan)
        w = g_rec.norm() / (g_gan.norm() + 1e-4)
        return self.cfg.gan_weight * w.clamp(0.0, 1e4).detach()

    def discriminator_loss(self, x, rec, generator=None) -> torch.Tensor:
        """Hinge loss of D on augmented real vs (detached) reconstructed images."""
        s = self.cfg.augment_shift
        real = self.disc(augment(x, s, generator))
        fake = self.disc(augment(rec.detach(), s, generator))
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
