"""Reduction of frozen features to the latent grid (docs/method.md 3.1), trained with a reconstruction objective.

The paper says only "a trainable per-token projector (MLP) and a decoder trained to reconstruct the
image"; the rest is our design, recorded in every feature prior's provenance:
- Input: features of a frozen extractor, computed once: a map (N, D, h', w') (ViT patch tokens on
  their grid, or a CNN's last map) or one vector per image (N, D) (a caption embedding).
- Each feature channel is standardised with mean/std of the fitting set (fixed buffers), so
  extractors of very different scales (DINOv2 tokens, unit-norm sentence vectors) train alike.
- Map -> grid: adaptive average pooling to (h, w) (a finer map is averaged, a coarser one repeated),
  then one MLP D -> hidden -> C applied to every token (1x1 convs, shared over positions).
- Vector -> grid: h*w learned position queries pos_(i,j) (pos_dim each) and
  token_(i,j) = MLP([v; pos_(i,j)]) -> C, so one vector spreads over the grid position by position.
- Scale: the projector output is standardised per channel (BatchNorm2d without affine parameters;
  after training its statistics are recomputed exactly over the fitting set). Latents thus have
  zero mean and unit variance per channel, and the projector cannot shrink or inflate z against the
  decoder; no L2 penalty is needed.
- Decoder (C, h, w) -> (c, R, R): two 3x3 convs at the grid, then nearest x2 upsampling + conv
  stages up to R (bilinear resize at the end when R / h is not a power of two); loss L1 + MSE.
p_r is the distribution of the projector outputs over the train set.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.training import check_finite, cosine_lr, log_progress


@dataclass(frozen=True)
class ReduceConfig:
    """Training of the projector + decoder; defaults are the CPU preset."""

    steps: int = 800
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 50
    hidden: int = 256           # projector MLP width
    pos_dim: int = 32           # vector input: size of each learned position query
    dec_width: int = 16         # decoder channels at full resolution (x2 per coarser stage, max x4)
    fit_images: int = 10_000    # images whose features are held in memory for fitting
    seed: int = 0
    log_every: int = 200


REDUCE_PRESETS = {
    "smoke": ReduceConfig(steps=30, batch=32, warmup=5, hidden=64, pos_dim=8, dec_width=8,
                          fit_images=256, log_every=0),
    "cpu": ReduceConfig(),
    "gpu": ReduceConfig(steps=6000, batch=256, hidden=512, dec_width=32, fit_images=50_000,
                        log_every=500),
}


class GridProjector(nn.Module):
    """(N, D, h', w') -> (N, C, h, w): adaptive average pooling, then a per-token MLP."""

    def __init__(self, dim: int, hidden: int, channels: int, size: int):
        super().__init__()
        self.size = size
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-2:] != (self.size, self.size):
            f = F.adaptive_avg_pool2d(f, self.size)
        return self.mlp(f)


class VectorProjector(nn.Module):
    """(N, D) -> (N, C, h, w): token_(i,j) = MLP([v; pos_(i,j)]) with learned position queries."""

    def __init__(self, dim: int, hidden: int, channels: int, size: int, pos_dim: int):
        super().__init__()
        self.size = size
        self.pos = nn.Parameter(torch.randn(size * size, pos_dim))
        # The first layer of MLP([v; pos]) split in two, so W_v v is computed once per image.
        self.fc_v, self.fc_pos = nn.Linear(dim, hidden), nn.Linear(pos_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, channels)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc_v(v)[:, None] + self.fc_pos(self.pos)[None])  # (N, h*w, hidden)
        z = self.out(h)  # (N, h*w, C)
        return z.transpose(1, 2).reshape(len(v), -1, self.size, self.size)


class ConvDecoder(nn.Module):
    """(C, h, w) -> (c, R, R) by convs and nearest x2 upsampling."""

    def __init__(self, channels: int, out_channels: int, size: int, resolution: int, width: int):
        super().__init__()
        self.resolution = resolution
        ups = max(0, round(math.log2(resolution / size)))
        ch = width * 2 ** min(ups, 2)  # widest at the coarse grid, where convs are cheap
        layers = [nn.Conv2d(channels, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
        for _ in range(ups):
            nxt = max(width, ch // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, nxt, 3, padding=1), nn.SiLU()]
            ch = nxt
        layers.append(nn.Conv2d(ch, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        return x


class ReductionAE(nn.Module):
    """Frozen-feature standardisation + projector + per-channel latent norm + decoder."""

    def __init__(self, arch: dict):
        super().__init__()
        self.arch = dict(arch)  # JSON-serialisable: enough to rebuild the module from a cache entry
        a = self.arch
        d, c, s = a["feature_dim"], a["latent_channels"], a["latent_size"]
        shape = (1, d, 1, 1) if a["spatial"] else (1, d)
        self.register_buffer("feat_mean", torch.zeros(shape))
        self.register_buffer("feat_std", torch.ones(shape))
        self.projector = (GridProjector(d, a["hidden"], c, s) if a["spatial"]
                          else VectorProjector(d, a["hidden"], c, s, a["pos_dim"]))
        self.norm = nn.BatchNorm2d(c, affine=False)
        self.decoder = ConvDecoder(c, a["image_channels"], s, a["resolution"], a["dec_width"])

    def _raw(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(self.feat_mean.device, torch.float32)
        return self.projector((f - self.feat_mean) / self.feat_std)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (N, c, R, R), latents (N, C, h, w))."""
        z = self.norm(self._raw(f))
        return self.decoder(z), z

    @torch.no_grad()
    def project(self, features: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        """Features (N, D, h', w') or (N, D) -> latents (N, C, h, w) float32, in eval mode."""
        was = self.training
        self.eval()
        out = [self.norm(self._raw(features[i:i + batch])).cpu() for i in range(0, len(features), batch)]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, *self.latent_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, c, R, R)."""
        return self.decoder(z)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.arch["latent_channels"], self.arch["latent_size"], self.arch["latent_size"])


@torch.no_grad()
def _channel_stats(chunks, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over every axis but `dim` of a stream of tensors, in float64."""
    s = s2 = n = 0
    for x in chunks:
        x = x.double().transpose(0, dim).reshape(x.shape[dim], -1)
        s, s2, n = s + x.sum(1), s2 + (x * x).sum(1), n + x.shape[1]
    mean = s / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().float()


def train_reduction(features: torch.Tensor, images: torch.Tensor, latent_channels: int, latent_size: int,
                    cfg: ReduceConfig = ReduceConfig(), device: str | torch.device = "cpu") -> ReductionAE:
    """Fit projector + decoder on (features, images) by L1 + MSE; returns the AE (on `device`) in eval mode."""
    if len(features) != len(images) or features.ndim not in (2, 4) or len(images) == 0:
        raise ValueError(f"need N features (N, D) or (N, D, h', w') and N images (N, c, R, R); got "
                         f"{tuple(features.shape)} and {tuple(images.shape)}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    spatial, n = features.ndim == 4, len(features)
    ae = ReductionAE(dict(feature_dim=features.shape[1], spatial=spatial, latent_channels=latent_channels,
                          latent_size=latent_size, image_channels=images.shape[1], resolution=images.shape[-1],
                          hidden=cfg.hidden, pos_dim=cfg.pos_dim, dec_width=cfg.dec_width))
    # statistics in float64 over chunks of 1024: bounded memory whatever N and D
    chunks = lambda: (features[i:i + 1024] for i in range(0, n, 1024))  # noqa: E731
    mean, std = _channel_stats(chunks(), 1)
    ae.feat_mean.copy_(mean.view_as(ae.feat_mean))
    ae.feat_std.copy_(std.clamp_min(1e-6).view_as(ae.feat_std))  # constant channels stay finite
    ae.to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ae.train()
    t0 = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(n, (min(cfg.batch, n),), generator=g)
        x = images[idx].to(device)
        recon, _ = ae(features[idx])
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        check_finite(loss, step, "feature reduction")
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log_progress("feature reduction", step, cfg.steps, loss.item(), t0, cfg.log_every)
    # Exact per-channel statistics of the final projector over the whole fitting set, so that the
    # latents z_train are standardised exactly (the running averages lag behind training).
    ae.eval()
    with torch.no_grad():
        mean, std = _channel_stats((ae._raw(f) for f in chunks()), 1)
    ae.norm.running_mean.copy_(mean.to(device))
    ae.norm.running_var.copy_(std.square().to(device))
    return ae
