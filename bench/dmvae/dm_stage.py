"""The DM stage (paper section 2): the tokenizer's aggregate posterior q(z) pushed onto p_r.

The schedule, per iteration i on one batch (x, y), with k = dm_every:
  1. only when i % k == 0, the tokenizer turn: z = E(x), z_n = norm(z) (p_r's normalisation),
     ONE AdamW step of E and G on  L_rec(x, G(z)) + lambda_DM * loss_DM(z_n)  (bench/core/dm.py:
     S_real and S_fake under no_grad, CFG weight dm_cfg on BOTH, t ~ U[t0, t1]), EMA of E and G,
     then one step of the PatchGAN once i >= tokenizer.gan_start (tokenizer_update.py);
     on the other k - 1 iterations the tokenizer is not touched;
  2. on EVERY iteration, S_fake: one flow-matching step on sg(norm(E(x))) with label dropout, so
     it takes k steps per tokenizer step and keeps up with q(z) (updating the tokenizer on every
     step instead was measured worse: S_fake then lags q(z)).
S_fake starts as a copy of S_real, which stays frozen. Both learning rates warm up linearly over
`warmup` iterations and then stay constant (the paper's schedule).

Progress towards p_r is probed every `probe_every` iterations: MMD^2 and sliced W2 of the EMA
encoder's latents of fixed held-out images against fixed p_r draws (bench/metrics/matching.py),
recorded as the stage's `curve` (the full before/after statistics with floors and the
two-sample test are measured in evaluation).

| preset | iterations | batch | lr (E, G) | lr S_fake | warmup | k | lambda_DM | GAN from | ema |
|---|---|---|---|---|---|---|---|---|---|
| smoke | 40     | 8   | 2e-4 | 2e-4 | 5    | 5 | 10 | 20     | 0.9    |
| cpu   | 1500   | 32  | 2e-4 | 2e-4 | 100  | 5 | 10 | 750    | 0.99   |
| gpu   | 50k    | 128 | 1e-4 | 1e-4 | 1000 | 5 | 10 | 25k    | 0.999  |
| paper | 300k   | 256 | 2e-5 | 2e-5 | 1000 | 5 | 10 | 5000   | 0.9999 |
"""
from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from bench import distributed as D
from bench.compute import Compute, ComputeConfig
from bench.config import SettingError, require
from bench.core.dm import dm_loss
from bench.core.flow import TimeSampler, flow_matching_loss
from bench.dmvae.autoencoder import TOKENIZER_PRESETS, TokenizerConfig
from bench.dmvae.latent_norm import LatentNorm
from bench.dmvae.loop import Resumable, average_gradients, shard_batch, step_noise, warmup_lr
from bench.dmvae.start import Start
from bench.dmvae.tokenizer_update import TokenizerUpdate
from bench.tracking import Tracker
from bench.training import check_finite, clip_gradients, log_progress


@dataclass(frozen=True)
class DMVAEConfig:
    """The DM stage (the KL baseline reads its budget, lr, ema, tokenizer and kl_weight from here too)."""

    steps: int = 1500           # iterations; the tokenizer updates on steps / dm_every of them
    batch: int = 32
    lr: float = 2e-4            # encoder + decoder (paper: 2e-5 at batch 256 for 300k iterations)
    fake_lr: float = 2e-4       # S_fake (paper: 2e-5)
    warmup: int = 100           # linear warmup of both learning rates, in iterations (paper: 1000)
    dm_every: int = 5           # k: the tokenizer takes one step every k-th iteration
    dm_weight: float = 10.0     # lambda_DM
    dm_cfg: float = 1.0         # CFG weight on both score nets inside the DM loss
    t0: float = 0.0             # t ~ U[t0, t1] in the DM loss (t = 1 clean)
    t1: float = 1.0
    label_dropout: float = 0.1  # S_fake's flow matching
    grad_clip: float = 1.0       # total gradient norm clipped to this; 0: no clipping
    ema_decay: float = 0.99     # EMA of encoder and decoder weights, per tokenizer update
    kl_weight: float = 1e-6     # vae baseline only: KL per pixel, as bench/features/kl_vae.py
    probe_every: int = 250      # iterations between the matching probes of the curve (0: none)
    probe_n: int = 512          # held-out images / p_r draws per probe
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seed: int = 0
    log_every: int = 500

    def __post_init__(self):
        require(self, positive=("batch", "lr", "fake_lr", "dm_every", "probe_n"),  # steps = 0: the start, unchanged
                non_negative=("steps", "warmup", "dm_weight", "dm_cfg", "grad_clip", "kl_weight", "probe_every", "seed",
                              "log_every"), fraction=("t0", "t1", "label_dropout", "ema_decay"))
        if not self.t0 < self.t1:
            raise SettingError("t1", f"must be greater than t0 = {self.t0} (t ~ U[t0, t1] in the DM loss)", self.t1)


DMVAE_PRESETS = {
    "smoke": DMVAEConfig(steps=40, batch=8, warmup=5, ema_decay=0.9, probe_every=20, probe_n=64,
                         tokenizer=replace(TOKENIZER_PRESETS["smoke"], gan_start=20), log_every=20),
    "cpu": DMVAEConfig(tokenizer=replace(TOKENIZER_PRESETS["cpu"], gan_start=750)),
    "gpu": DMVAEConfig(steps=50_000, batch=128, lr=1e-4, fake_lr=1e-4, warmup=1000, ema_decay=0.999,
                       probe_every=5000, probe_n=2048, tokenizer=replace(TOKENIZER_PRESETS["gpu"], gan_start=25_000),
                       log_every=1000),
    "paper": DMVAEConfig(steps=300_000, batch=256, lr=2e-5, fake_lr=2e-5, warmup=1000, ema_decay=0.9999,
                         probe_every=10_000, probe_n=5000, tokenizer=replace(TOKENIZER_PRESETS["gpu"], gan_start=5000),
                         log_every=1000),
}


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Raw latents (N, C, h, w) of images, on CPU."""
    dev = next(encoder.parameters()).device
    return torch.cat([encoder(x.to(dev)).float().cpu() for x in images.split(batch)])


def train_dmvae(images: torch.Tensor, labels: torch.Tensor, prior, s_real: nn.Module, norm: LatentNorm,
                cfg: DMVAEConfig, start: Start, probe=None, checkpoint: str | None = None,
                checkpoint_every: int = 0, compute: ComputeConfig | None = None, track: Tracker | None = None
                ) -> tuple[nn.Module, nn.Module, nn.Module, dict]:
    """The DM stage on train images (N, c, R, R) in [-1, 1] with labels (N,), from `start`.

    `probe` = (held-out images, Matcher on p_r draws in normalised space) gives the curve.
    Returns the EMA encoder and decoder (eval), S_fake, and a history dict (losses, curve, settings,
    throughput). `checkpoint` (a path stem) makes the loop resumable (loop.py); `compute` the GPU
    settings (bench/compute.py: autocast covers the encoder, decoder, both score nets and the losses);
    `track` the experiment logs (bench/tracking.py; off by default).
    """
    if (s_real.in_channels, s_real.input_size, s_real.input_size) != tuple(prior.latent_shape):
        raise ValueError(f"S_real works on latents {(s_real.in_channels, s_real.input_size)} but the prior's "
                         f"shape is {prior.latent_shape}")
    if int(labels.max()) >= s_real.num_classes:
        raise ValueError(f"labels go up to {int(labels.max())} but S_real knows {s_real.num_classes} "
                         f"classes: build the prior with the dataset (prior.num_classes)")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # batches only: the same on every rank
    device = D.device()
    cx = Compute(compute, "dmvae", device)
    tok = TokenizerUpdate(start.encoder, start.decoder, images.shape[1], cfg.tokenizer, cfg.lr, cfg.ema_decay,
                          cfg.grad_clip, device, "DM", compute=cx)
    s_real = s_real.to(device).eval().requires_grad_(False)
    s_fake = copy.deepcopy(s_real).train().requires_grad_(True)  # S_fake starts AS S_real
    opt_f = cx.adamw(s_fake.parameters(), lr=cfg.fake_lr, betas=(0.9, 0.95), weight_decay=0.0)
    compiled, meter = (cx.compile(s_real), cx.compile(s_fake)), cx.meter()
    dm_times, fm_times = TimeSampler(cfg.t0, cfg.t1), TimeSampler()  # S_fake learns q(z) at every noise level
    modules, optimizers = {**tok.modules(), "s_fake": s_fake}, {**tok.optimizers(), "opt_f": opt_f}

    noise = step_noise(cfg.seed)
    resume = Resumable(checkpoint, checkpoint_every)
    first, extra = resume.load(modules, optimizers, g, noise)
    window, rows, curve = defaultdict(list, extra.get("window", {})), extra.get("rows", []), extra.get("curve", [])

    def probe_now(it: int) -> None:
        if probe is not None and cfg.probe_every and D.rank() == 0:
            x_probe, matcher = probe
            curve.append({"step": it, **matcher.stats(norm.apply(encode(tok.ema_enc, x_probe)), c2st=False)})

    if first == 0:
        probe_now(0)
    def kind(it: int) -> str:  # the FLOP meter counts one iteration of each kind
        if it % cfg.dm_every:
            return "S_fake only"
        return "tokenizer turn + D" if tok.recon.gan_active(it) else "tokenizer turn"

    track = track or Tracker()
    with cx.session(), track.session(first, cfg.steps, cfg.batch):
        t0 = time.time()
        for it in range(first, cfg.steps):
            idx = shard_batch(torch.randint(len(images), (cfg.batch,), generator=g))  # same global batch on all ranks
            x, y = cx.fetch(images, idx), cx.fetch(labels, idx)
            logs, grad_norm, step_kind = {}, {}, kind(it)
            real, fake = (s_real, s_fake) if meter.counting(step_kind) else compiled  # counted: eager
            with meter.step(step_kind):
                # ---- 1. the tokenizer turn, every k-th iteration: L_rec + lambda_DM * loss_DM, then D
                if it % cfg.dm_every == 0:
                    with cx.autocast():
                        z = tok.enc(x).float()  # (B, C, h, w), with grad
                        z_n = norm.apply(z)
                        loss_dm = dm_loss(real, fake, z_n, y, dm_times, cfg.dm_cfg, generator=noise)
                    check_finite(loss_dm, it, "DM stage: DM loss")
                    logs["dm"] = loss_dm.item()
                    grad_norm["tokenizer"] = tok.step(x, z, cfg.dm_weight * loss_dm, it,
                                                      warmup_lr(it, cfg.lr, cfg.warmup), noise, logs)
                    z_n = z_n.detach()
                else:
                    with torch.no_grad(), cx.autocast():
                        z_n = norm.apply(tok.enc(x).float())

                # ---- 2. S_fake: flow matching on the current latents sg(z_n), every iteration
                with cx.autocast():
                    loss_f = flow_matching_loss(fake, z_n, y, fm_times, cfg.label_dropout, noise)
                check_finite(loss_f, it, "DM stage: S_fake flow-matching loss")
                for grp in opt_f.param_groups:
                    grp["lr"] = warmup_lr(it, cfg.fake_lr, cfg.warmup)
                opt_f.zero_grad(set_to_none=True)
                loss_f.backward()
                average_gradients(s_fake.parameters())
                grad_norm["s_fake"] = clip_gradients(s_fake.parameters(), cfg.grad_clip)
                opt_f.step()
            logs["fake"] = loss_f.item()

            # ---- log, probe, checkpoint
            for k, v in logs.items():
                window[k].append(v)
            done = it + 1
            track.step(done, loss=logs, grad_norm=grad_norm,
                       lr={"tokenizer": tok.opt.param_groups[0]["lr"], "s_fake": opt_f.param_groups[0]["lr"]})
            if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
                rows.append({"step": done, **{k: sum(v) / len(v) for k, v in window.items()},
                             "seconds": round(time.time() - t0, 2)})
                window.clear()
            if cfg.probe_every and (done % cfg.probe_every == 0 or done == cfg.steps):
                probe_now(done)
            log_progress("DM stage", it, cfg.steps, loss_f.item(), t0, cfg.log_every if D.rank() == 0 else 0)
            resume.maybe_save(done, cfg.steps, modules, optimizers, g,
                              {"rows": rows, "window": dict(window), "curve": curve}, noise)
        seconds = time.time() - t0
    enc, dec = tok.finished()
    terms = tok.recon.loss_terms()
    # did it actually run: D steps only on tokenizer turns at or after gan_start
    terms["gan"] = terms["gan"] and any(i >= cfg.tokenizer.gan_start for i in range(0, cfg.steps, cfg.dm_every))
    history = {"stage": "DM", "losses": rows, "curve": curve, "loss_terms": terms, "start": start.record,
               "config": asdict(cfg), "seconds": seconds, "resumed_from": first,
               "img_per_s": (cfg.steps - first) * cfg.batch / max(seconds, 1e-9),
               "tokenizer_updates": len(range(0, cfg.steps, cfg.dm_every)), "fake_updates": cfg.steps,
               "ema": {"decay": cfg.ema_decay, "returned": "EMA encoder and decoder"},
               "regulariser": {"kind": "distribution matching", "dm_every": cfg.dm_every, "dm_weight": cfg.dm_weight,
                               "dm_cfg": cfg.dm_cfg, "t_range": [cfg.t0, cfg.t1],
                               "schedule": "tokenizer (L_rec + lambda_DM loss_DM) and D every k-th iteration, "
                                           "S_fake every iteration; linear lr warmup then constant"},
               "norm": norm.to_dict(),
               "compute": cx.record(meter, (cfg.steps - first) * cfg.batch, seconds, D.world_size())}
    return enc, dec, s_fake.eval(), history
