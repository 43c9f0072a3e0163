"""The teacher S_real: class-conditional flow matching on samples of the reference prior (docs/method.md 3.2).

The latents are normalised first (latent_norm.py, measured on p_r samples); the returned EMA net
and the LatentNorm belong together: S_fake and the downstream model use the same LatentNorm.

| preset | net | patch | steps | batch | lr | ema |
|---|---|---|---|---|---|---|
| smoke | P | 2 | 30   | 16  | 1e-3 | 0.9   |
| cpu   | P | 2 | 2000 | 64  | 1e-3 | 0.99  |
| gpu   | B | 1 | 20k  | 256 | 2e-4 | 0.999 |
| paper | L | 1 | 100k | 256 | 1e-4 | 0.9999 |

The cpu budget is set by how close S_real's own samples get to p_r, since the DM stage can bring
q(z) no closer than that: on the dino prior (measured, 1000 held-out draws, floor MMD^2 0.00054)
500 steps left MMD^2 0.031 (57x the floor), 2000 steps 0.0036 (7x); an EMA of 0.999 at 2000 steps
was worse (0.087: the average still holds early weights). More Euler steps (100 instead of 25) did
not change it, so the error is the net's, not the sampler's.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from bench import distributed as D
from bench.compute import Compute, ComputeConfig
from bench.config import require
from bench.core.dit import DIT_SIZES, POSITIONS, build_dit
from bench.core.ema import make_ema
from bench.core.flow import TimeSampler
from bench.dmvae.latent_norm import LatentNorm, measure_norm
from bench.dmvae.loop import Resumable, flow_matching_step, shard_batch, step_noise
from bench.tracking import Tracker
from bench.training import log_progress


@dataclass(frozen=True)
class TeacherConfig:
    """Training of S_real (S_fake is its copy, so it shares the size); defaults are the cpu preset."""

    net: str = "P"               # a DIT_SIZES key (bench/core/dit.py)
    patch: int = 2
    pos: str = "rope"
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 25
    ema_decay: float = 0.99
    label_dropout: float = 0.1   # trains the unconditional branch for CFG (docs/method.md 3.2)
    grad_clip: float = 1.0       # total gradient norm clipped to this; 0: no clipping
    norm_samples: int = 4096     # prior draws that measure the latent normalisation
    seed: int = 0
    log_every: int = 500

    def __post_init__(self):
        require(self, positive=("patch", "steps", "batch", "lr", "norm_samples"),
                non_negative=("warmup", "grad_clip", "seed", "log_every"), fraction=("ema_decay", "label_dropout"),
                choices={"net": DIT_SIZES, "pos": POSITIONS})


TEACHER_PRESETS = {
    "smoke": TeacherConfig(steps=30, batch=16, lr=1e-3, warmup=5, ema_decay=0.9, norm_samples=512,
                           log_every=0),
    "cpu": TeacherConfig(),
    "gpu": TeacherConfig(net="B", patch=1, steps=20_000, batch=256, lr=2e-4, warmup=500, ema_decay=0.999,
                         log_every=1000),
    "paper": TeacherConfig(net="L", patch=1, steps=100_000, batch=256, lr=1e-4, warmup=1000,
                           ema_decay=0.9999, norm_samples=50_000, log_every=5000),
}


def train_teacher(prior, cfg: TeacherConfig, stats: dict | None = None, checkpoint: str | None = None,
                  checkpoint_every: int = 0, compute: ComputeConfig | None = None,
                  track: Tracker | None = None) -> tuple[nn.Module, LatentNorm]:
    """S_real (the frozen EMA net, eval mode) trained on normalised prior samples, and the LatentNorm.

    `stats`, when given, is filled with the final loss, timings and img/s; `checkpoint` (a path
    stem) makes the loop resumable (loop.py); `compute` the GPU settings (bench/compute.py); `track`
    the experiment logs (bench/tracking.py; off by default).
    """
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    device = D.device()
    cx = Compute(compute, "teacher", device)
    norm = measure_norm(prior.sample(cfg.norm_samples, g)[0], f"prior '{prior.info.name}' samples")
    net = build_dit(cfg.net, prior.latent_shape, prior.num_classes, cfg.patch, cfg.pos).to(device)
    ema = make_ema(net)
    opt = cx.adamw(net.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    fwd, meter = cx.compile(net), cx.meter()
    times = TimeSampler()
    noise = step_noise(cfg.seed)
    resume = Resumable(checkpoint, checkpoint_every)
    first, extra = resume.load({"net": net, "ema": ema}, {"opt": opt}, g, noise)
    losses, track = extra.get("losses", []), track or Tracker()
    with cx.session(), track.session(first, cfg.steps, cfg.batch):
        t0 = time.time()
        for step in range(first, cfg.steps):
            z, y = (shard_batch(a) for a in prior.sample(cfg.batch, g))  # the same global batch on every rank
            model = net if meter.counting() else fwd  # the counted step runs eagerly
            with meter.step():
                loss, grad_norm = flow_matching_step(net, ema, opt, norm.apply(z).to(device), y.to(device), times,
                                                     cfg, step, noise, "teacher (S_real) stage", model=model,
                                                     autocast=cx.autocast)
            losses.append(loss)
            track.step(step + 1, loss=loss, lr=opt.param_groups[0]["lr"], grad_norm=grad_norm)
            log_progress("teacher", step, cfg.steps, loss, t0, cfg.log_every if D.rank() == 0 else 0)
            resume.maybe_save(step + 1, cfg.steps, {"net": net, "ema": ema}, {"opt": opt}, g, {"losses": losses},
                              noise)
        seconds = time.time() - t0
    if stats is not None:
        tail = losses[-max(1, len(losses) // 10):]  # the last 10% of steps
        stats.update(config=asdict(cfg), final_loss=sum(tail) / max(1, len(tail)), seconds=seconds,
                     img_per_s=(cfg.steps - first) * cfg.batch / max(seconds, 1e-9), norm=norm.to_dict(),
                     resumed_from=first,
                     compute=cx.record(meter, (cfg.steps - first) * cfg.batch, seconds, D.world_size()))
    return ema.eval().requires_grad_(False), norm
