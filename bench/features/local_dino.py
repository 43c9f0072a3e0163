"""A small ViT trained here by DINO self-distillation (no labels): the stand-in for DINOv2.

DINO (Caron et al. 2021): a student and an EMA teacher see different crops of one image; the
student's softmax over K prototypes is pulled towards the teacher's centred, sharpened softmax.
No pretrained DINO weights ship in any registry here (docs/assets.md), so the 'dino' and 'subdino'
priors default to this network. Also home of the batched tensor augmentations the local
trainers share (torchvision's per-image transforms are far too slow for this on 2 cores).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.training import check_finite, cosine_lr, log_progress


# --------------------------------------------------------------------------------------------
# Shared training helpers (batched augmentation, schedule, progress, finiteness)
# --------------------------------------------------------------------------------------------
def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
                        flip: bool = True) -> torch.Tensor:
    """Per-sample random resized crop (+ horizontal flip) of a batch via one affine grid_sample."""
    b = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=g)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(b, generator=g)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # crop side as a fraction of the image side
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, generator=g) - 1)  # centre in grid_sample's [-1, 1] coords
    cy = (1 - h) * (2 * torch.rand(b, generator=g) - 1)
    sgn = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sgn, cx, h, cy
    theta = theta.to(x)  # random numbers come from the CPU generator on any device
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.4,
                     solarize_p: float = 0.0) -> torch.Tensor:
    """Brightness/contrast (and saturation for RGB) jitter plus optional solarisation, on [-1, 1]."""
    b = x.shape[0]
    u = lambda: ((2 * torch.rand(b, 1, 1, 1, generator=g) - 1) * strength).to(x)  # noqa: E731
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u()) + mean + u()  # contrast about the image mean, then brightness
    if x.shape[1] == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * (1 + u())
    if solarize_p > 0:  # DINO's asymmetric solarisation: invert everything above mid-grey
        sol = (torch.rand(b, 1, 1, 1, generator=g) < solarize_p).to(x.device)
        x = torch.where(sol & (x > 0), -x, x)
    return x.clamp(-1, 1)


# --------------------------------------------------------------------------------------------
# The ViT
# --------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT with a CLS token; accepts any input side divisible by `patch` (positions interpolated)."""

    def __init__(self, img_size: int = 32, in_ch: int = 1, patch: int = 4, dim: int = 64,
                 depth: int = 2, heads: int = 2):
        super().__init__()
        self.patch, self.grid, self.dim = patch, img_size // patch, dim
        self.embed = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos
        p = self.pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # local crops
        p = F.interpolate(p, size=(h, w), mode="bicubic", align_corners=False)
        return p.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)  # (B, D, h, w)
        h, w = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2) + self._pos(h, w)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)  # (B, 1 + h*w, D)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch tokens (B, h*w, D) in row-major grid order: the feature grid."""
        return self._run(x)[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS feature (B, D)."""
        return self._run(x)[:, 0]


class DinoHead(nn.Module):
    """MLP (with BN) -> l2-normalised bottleneck -> cosine logits against K unit-norm prototypes (DINO)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int):
        super().__init__()
        # BN (DINO's use_bn option): at init the CLS features of all images are nearly equal, so
        # without it the head's logits vary over the batch by ~0.03 < teacher_temp and the centred
        # teacher is almost uniform: no signal for the short CPU runs.
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.proto = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Unit-norm prototypes play the role of DINO's weight-normalised last layer with g = 1.
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.proto, dim=-1).t()


# --------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DinoConfig:
    """DINO training of the local ViT; defaults are the CPU preset."""

    # CPU preset, measured on 2 shared cores: a dim-192 depth-4 ViT (batch 64) gets ~200 steps in about
    # 6 minutes and DINO is still on its uniform-teacher plateau (kNN 47%, below its random init's
    # 55%); this small ViT gets 1,600 steps and leaves it (Fashion-MNIST kNN 71%, linear probe 75%).
    steps: int = 1600
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.04
    warmup: int = 100
    patch: int = 4
    dim: int = 64
    depth: int = 2
    heads: int = 2
    head_hidden: int = 256
    bottleneck: int = 128
    prototypes: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # < student_temp: the teacher is sharpened
    center_momentum: float = 0.9
    teacher_momentum: float = 0.99  # cosine-annealed to 1; lower than DINO's 0.996 for short runs
    local_crops: int = 2
    local_size: int = 16  # side of a local crop (4x4 tokens at patch 4 for 32px images)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    grad_clip: float = 3.0
    seed: int = 0
    log_every: int = 200

    def __post_init__(self):
        if self.local_size % self.patch or self.dim % self.heads:
            raise ValueError(f"local_size ({self.local_size}) must be a multiple of patch ({self.patch}) "
                             f"and dim ({self.dim}) of heads ({self.heads})")
        if not self.teacher_temp < self.student_temp:
            raise ValueError("DINO sharpens the teacher: teacher_temp must be < student_temp")


DINO_PRESETS = {
    "smoke": DinoConfig(steps=4, batch=16, warmup=1, dim=32, depth=1, heads=2, head_hidden=64,
                        bottleneck=32, prototypes=64, log_every=0),
    "cpu": DinoConfig(),
}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              cfg: DinoConfig) -> torch.Tensor:
    """Cross-entropy between each teacher global view and every student view of another crop."""
    t_probs = [F.softmax((t - center) / cfg.teacher_temp, dim=-1) for t in teacher]
    s_logp = [F.log_softmax(s / cfg.student_temp, dim=-1) for s in student]
    terms = [-(tp * sl).sum(-1).mean() for i, tp in enumerate(t_probs)
             for j, sl in enumerate(s_logp) if j != i]  # student views 0, 1 are the global crops
    return sum(terms) / len(terms)


def train_local_dino(images: torch.Tensor, cfg: DinoConfig = DinoConfig()) -> ViT:
    """Train the ViT by DINO on `images` (N, C, R, R) in [-1, 1] (on their device); returns the teacher, eval mode."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    n, c, r, _ = images.shape
    student = ViT(r, c, cfg.patch, cfg.dim, cfg.depth, cfg.heads).to(images.device)
    s_head = DinoHead(cfg.dim, cfg.head_hidden, cfg.bottleneck, cfg.prototypes).to(images.device)
    teacher, t_head = copy.deepcopy(student), copy.deepcopy(s_head)
    for p in [*teacher.parameters(), *t_head.parameters()]:
        p.requires_grad_(False)
    params = [*student.parameters(), *s_head.parameters()]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms/biases/tokens
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    center = torch.zeros(cfg.prototypes, device=images.device)
    t0 = time.time()
    for step in range(cfg.steps):
        # --- multi-crop views of one batch: 2 global (teacher + student), local (student only)
        x = images[torch.randint(n, (cfg.batch,), generator=g)]
        glob = [intensity_jitter(random_resized_crop(x, r, cfg.global_scale, g), g, solarize_p=sp)
                for sp in (0.0, 0.2)]
        loc = [intensity_jitter(random_resized_crop(x, cfg.local_size, cfg.local_scale, g), g)
               for _ in range(cfg.local_crops)]
        # --- forward: batch views of one size together (one pass per resolution)
        with torch.no_grad():
            t_out = t_head(teacher(torch.cat(glob))).chunk(2)
        s_out = list(s_head(student(torch.cat(glob))).chunk(2))
        if loc:
            s_out += list(s_head(student(torch.cat(loc))).chunk(len(loc)))
        loss = dino_loss(s_out, t_out, center, cfg)
        check_finite(loss, step, "local DINO")
        # --- student step
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        # --- teacher EMA (momentum cosine-annealed to 1) and EMA centre of teacher outputs
        m = 1 - (1 - cfg.teacher_momentum) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        with torch.no_grad():
            for pt, ps in zip([*teacher.parameters(), *t_head.parameters()], params):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            center = cfg.center_momentum * center + (1 - cfg.center_momentum) * torch.cat(t_out).mean(0)
        log_progress("local DINO", step, cfg.steps, loss.item(), t0, cfg.log_every)
    return teacher.eval()
