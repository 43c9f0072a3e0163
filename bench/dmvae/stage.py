"""The DMVAE stage (METHOD.md section 2 and 3.3), its encoder start, and the KL-VAE baseline.

Every iteration, on a batch (x, y):
  1. tokenizer: z = E(x), z_n = norm(z), rec = G(z);  L = L_rec(x, rec)            (autoencoder.py)
     every k-th iteration (k = dm_every = 5) also  L += lambda_DM * loss_DM(z_n)     (bench/core/dm.py:
     S_real, S_fake under no_grad, CFG weight dm_cfg on BOTH, t ~ U[t0, t1]);
     AdamW (0.9, 0.95), grad clip 1.0, then EMA of E and G;
  2. discriminator: hinge loss on augmented x vs sg(rec) (once the GAN is active);
  3. S_fake: flow matching on sg(z_n) with label dropout 0.1, EVERY iteration.
S_fake is a deepcopy of S_real at step 0; S_real is frozen (requires_grad False) throughout.

Encoder start (METHOD.md 3.3; the record says which was used):
- "plain-ae": a plain conv AE pre-trained on reconstruction (L1 + L2) for a few steps (the paper's
  start for priors without an image encoder). The default for every prior.
- "distill": the same AE with an extra MSE pulling E(x) onto the reference AE's latents
  prior.encode_images(x), for priors that have one. The paper starts from the stage-1 reference
  AE itself; here that "encoder" is a frozen feature net (a ViT, a ResNet, or a text encoder that
  never sees the image) plus a projector, not the conv encoder every prior shares, and it could
  not be fine-tuned on a CPU. Distilling its map into the shared conv encoder keeps one
  architecture for all rows while starting q(z) near p_r, as the paper's start does.

The vae row (`train_vae_baseline`): the same tokenizer, loss, optimiser and budget, with a
variational encoder and a KL term in place of distribution matching (no S_real, no S_fake), so
the rows differ only in how the latent space is regularised.

| preset | steps | batch | lr (E, G, S_fake) | dm_every | lambda_DM | dm_cfg | ema | pretrain steps |
|---|---|---|---|---|---|---|---|---|
| smoke | 20   | 8   | 2e-4 | 5 | 10 | 1.0 | 0.9    | 20   |
| cpu   | 400  | 32  | 2e-4 | 5 | 10 | 1.0 | 0.99   | 200  |
| gpu   | 20k  | 128 | 1e-4 | 5 | 10 | 1.0 | 0.999  | 5000 |
| paper | 300k | 256 | 2e-5 | 5 | 10 | 1.0 | 0.9999 | (the reference AE) |
"""
from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import distributed as D
from bench.core.dm import dm_loss
from bench.core.ema import ema_update, make_ema
from bench.core.flow import TimeSampler, flow_matching_loss
from bench.dmvae.autoencoder import (TOKENIZER_PRESETS, Decoder, Encoder, ReconstructionLoss,
                                     TokenizerConfig, build_tokenizer)
from bench.dmvae.latent_norm import LatentNorm, measure_norm
from bench.dmvae.loop import Resumable, average_gradients, shard_batch, step_noise
from bench.features.local_dino import cosine_lr, log_progress
from bench.metrics.distribution import dm_score


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainConfig:
    """The plain-AE start of the encoder (reconstruction only, no GAN)."""

    steps: int = 200
    batch: int = 32
    lr: float = 1e-3
    distill_weight: float = 1.0  # "distill" start: weight of MSE(E(x), reference latents)
    seed: int = 0
    log_every: int = 100


@dataclass(frozen=True)
class DMVAEConfig:
    """The DM stage (and the KL baseline, which reads steps/batch/lr/ema/tokenizer/kl_weight)."""

    steps: int = 400
    batch: int = 32
    lr: float = 2e-4            # encoder + decoder (paper: 2e-5)
    fake_lr: float = 2e-4       # S_fake (paper: 2e-5)
    warmup: int = 0
    dm_every: int = 5           # k: the DM loss reaches the encoder every k-th iteration
    dm_weight: float = 10.0     # lambda_DM
    dm_cfg: float = 1.0         # CFG weight on both score nets inside the DM loss
    t0: float = 0.0             # t ~ U[t0, t1] in the DM loss (t = 1 clean)
    t1: float = 1.0
    label_dropout: float = 0.1  # S_fake's flow matching
    grad_clip: float = 1.0
    ema_decay: float = 0.99     # EMA of encoder and decoder weights
    kl_weight: float = 1e-6     # vae baseline only: KL per pixel, as bench/features/kl_vae.py
    score_n: int = 512          # images / prior draws for dm_score before and after (0: skip)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seed: int = 0
    log_every: int = 50


PRETRAIN_PRESETS = {
    "smoke": PretrainConfig(steps=20, batch=8, log_every=0),
    "cpu": PretrainConfig(),
    "gpu": PretrainConfig(steps=5000, batch=128, lr=5e-4, log_every=500),
}

DMVAE_PRESETS = {
    "smoke": DMVAEConfig(steps=20, batch=8, ema_decay=0.9, score_n=64,
                         tokenizer=TOKENIZER_PRESETS["smoke"], log_every=10),
    "cpu": DMVAEConfig(),
    "gpu": DMVAEConfig(steps=20_000, batch=128, lr=1e-4, fake_lr=1e-4, warmup=500, ema_decay=0.999,
                       score_n=2048, tokenizer=TOKENIZER_PRESETS["gpu"], log_every=500),
    "paper": DMVAEConfig(steps=300_000, batch=256, lr=2e-5, fake_lr=2e-5, warmup=1000, ema_decay=0.9999,
                         score_n=5000, tokenizer=TOKENIZER_PRESETS["gpu"], log_every=1000),
}


def _finite(value: torch.Tensor, what: str, step: int, stage: str) -> None:
    if not torch.isfinite(value):
        raise RuntimeError(f"{stage} stage: non-finite {what} ({value.item()}) at step {step}; lower the "
                           f"learning rate or check the inputs for NaN/inf.")


# --------------------------------------------------------------------------------------------
# Encoder start
# --------------------------------------------------------------------------------------------
@dataclass
class Start:
    """A trained (encoder, decoder) pair to start the DM stage from, and what it is."""

    encoder: Encoder
    decoder: Decoder
    record: dict


def pretrain_autoencoder(images: torch.Tensor, latent_shape: tuple[int, int, int], cfg: PretrainConfig,
                         tokenizer: TokenizerConfig, target: torch.Tensor | None = None) -> Start:
    """The plain-AE start (L1 + L2); with `target` (N, C, h, w) reference latents, the distill start."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    device = D.device()
    enc, dec = (m.to(device) for m in build_tokenizer(tuple(images.shape[1:]), latent_shape, tokenizer))
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0, logs = time.time(), {}
    for step in range(cfg.steps):
        idx = shard_batch(torch.randint(len(images), (cfg.batch,), generator=g))
        x = images[idx].to(device)
        z = enc(x)
        rec = dec(z)
        loss = (rec - x).abs().mean() + tokenizer.l2_weight * (rec - x).pow(2).mean()
        logs["rec"] = loss.item()
        if target is not None:
            distill = F.mse_loss(z, target[idx].to(device))
            loss = loss + cfg.distill_weight * distill
            logs["distill"] = distill.item()
        _finite(loss, "reconstruction loss", step, "encoder pre-training")
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, min(50, cfg.steps // 10 + 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params)
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log_progress("encoder start", step, cfg.steps, loss.item(), t0, cfg.log_every)
    seconds = time.time() - t0
    record = {"kind": "distill" if target is not None else "plain-ae", "config": asdict(cfg),
              "loss_terms": {"l1": True, "l2": tokenizer.l2_weight > 0, "gan": False,
                             "distill": target is not None},
              "final": logs, "seconds": seconds, "img_per_s": cfg.steps * cfg.batch / max(seconds, 1e-9)}
    return Start(enc.eval(), dec.eval(), record)


# --------------------------------------------------------------------------------------------
# The DM stage
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Raw latents (N, C, h, w) of images, on CPU."""
    dev = next(encoder.parameters()).device
    return torch.cat([encoder(x.to(dev)).float().cpu() for x in images.split(batch)])


def train_dmvae(images: torch.Tensor, labels: torch.Tensor, prior, s_real: nn.Module, norm: LatentNorm,
                cfg: DMVAEConfig, start: Start | None = None, pretrain: PretrainConfig | None = None,
                checkpoint: str | None = None, checkpoint_every: int = 0) -> tuple[Encoder, Decoder, nn.Module, dict]:
    """METHOD.md section 2 on images (N, c, R, R) in [-1, 1] with labels (N,).

    Returns the EMA encoder and decoder (eval mode), S_fake, and a history dict: per-window losses,
    the loss-terms record, the encoder start record, dm_score before/after and throughput.
    `start` is the (cached) encoder start; without it a plain AE is pre-trained here (`pretrain`).
    `checkpoint` (a path stem) makes the loop resumable every `checkpoint_every` steps (loop.py).
    """
    if (s_real.in_channels, s_real.input_size, s_real.input_size) != tuple(prior.latent_shape):
        raise ValueError(f"S_real works on latents {(s_real.in_channels, s_real.input_size)} but the prior's "
                         f"shape is {prior.latent_shape}")
    if int(labels.max()) >= s_real.num_classes:
        raise ValueError(f"labels go up to {int(labels.max())} but S_real knows {s_real.num_classes} "
                         f"classes: build the prior with the dataset (prior.num_classes)")
    if start is None:
        start = pretrain_autoencoder(images, prior.latent_shape, pretrain or PretrainConfig(), cfg.tokenizer)
    s_real.requires_grad_(False).eval()
    s_fake = copy.deepcopy(s_real).train().requires_grad_(True)  # S_fake starts AS S_real
    return _train_tokenizer(images, labels, start, cfg, "DM", norm=norm, prior=prior, s_real=s_real,
                            s_fake=s_fake, checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def train_vae_baseline(images: torch.Tensor, labels: torch.Tensor, latent_shape: tuple[int, int, int],
                       cfg: DMVAEConfig, checkpoint: str | None = None,
                       checkpoint_every: int = 0) -> tuple[Encoder, Decoder, LatentNorm, dict]:
    """The vae row: same tokenizer and budget, a KL term instead of DM; returns its LatentNorm too.

    Started from scratch (a KL-VAE's usual start); its LatentNorm is measured on its own latents.
    """
    torch.manual_seed(cfg.seed)  # the initial weights must not depend on what ran before in this process
    enc, dec = build_tokenizer(tuple(images.shape[1:]), latent_shape, cfg.tokenizer, variational=True)
    start = Start(enc, dec, {"kind": "scratch (KL-VAE baseline)"})
    enc, dec, _, history = _train_tokenizer(images, labels, start, cfg, "VAE baseline", checkpoint=checkpoint,
                                            checkpoint_every=checkpoint_every)
    z = encode(enc, images[:4096])
    return enc, dec, measure_norm(z, "vae baseline encoder latents (train images)"), history


def _train_tokenizer(images, labels, start: Start, cfg: DMVAEConfig, stage: str, norm: LatentNorm | None = None,
                     prior=None, s_real=None, s_fake=None, checkpoint=None, checkpoint_every: int = 0):
    """The shared loop: DM (s_real given) or KL (variational encoder) regularisation of the latents."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # batches only: the same on every rank
    device, dm = D.device(), s_real is not None
    # copies: the caller's (cached) start stays as it was, ready for the next prior
    enc, dec = (copy.deepcopy(m).to(device).train() for m in (start.encoder, start.decoder))
    recon = ReconstructionLoss(images.shape[1], cfg.tokenizer).to(device)
    ema_enc, ema_dec = make_ema(enc), make_ema(dec)
    ae_params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.AdamW(ae_params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    opt_d = (torch.optim.AdamW(recon.disc.parameters(), lr=cfg.tokenizer.disc_lr, betas=(0.5, 0.9),
                               weight_decay=0.0) if recon.disc is not None else None)  # LDM's D betas
    modules = {"enc": enc, "dec": dec, "ema_enc": ema_enc, "ema_dec": ema_dec, "recon": recon}
    optimizers = {"opt": opt, **({"opt_d": opt_d} if opt_d is not None else {})}
    if dm:
        s_real, s_fake = s_real.to(device), s_fake.to(device)
        opt_f = torch.optim.AdamW(s_fake.parameters(), lr=cfg.fake_lr, betas=(0.9, 0.95), weight_decay=0.0)
        modules["s_fake"], optimizers["opt_f"] = s_fake, opt_f
        times = TimeSampler(cfg.t0, cfg.t1)
        fm_times = TimeSampler()  # S_fake learns q(z) at every noise level, like S_real
        ref = norm.apply(prior.sample(cfg.score_n, g)[0]) if cfg.score_n else None
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed + 1))
        score_x = images[pick[:cfg.score_n]]  # a fixed random subset: splits may be sorted by class

    noise = step_noise(cfg.seed)
    resume = Resumable(checkpoint, checkpoint_every)
    first, extra = resume.load(modules, optimizers, g, noise)
    if dm and cfg.score_n:  # the score of the encoder the stage STARTED from, also after a resume
        before = extra.get("before") or dm_score(ref, norm.apply(encode(enc, score_x)), seed=cfg.seed)
    window, rows = defaultdict(list, extra.get("window", {})), extra.get("rows", [])
    t0 = time.time()
    for step in range(first, cfg.steps):
        idx = shard_batch(torch.randint(len(images), (cfg.batch,), generator=g))  # same global batch on all ranks
        x, y = images[idx].to(device), labels[idx].to(device)
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup) if cfg.warmup else cfg.lr

        # ---- 1. encoder + decoder: L_rec (+ lambda_DM * loss_DM every k-th step, or + KL)
        if enc.variational:
            mean, logvar = enc.posterior(x)
            z = mean + (0.5 * logvar).exp() * noise.randn(mean.shape, mean.device, mean.dtype)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        else:
            z = enc(x)  # (B, C, h, w)
        rec = dec(z)
        loss, logs = recon.generator_loss(x, rec, dec.last_layer, step, noise)
        logs["rec"] = loss.item()
        _finite(loss, "reconstruction loss", step, stage)
        if enc.variational:
            loss = loss + cfg.kl_weight * kl
            logs["kl"] = kl.item()
        if dm:
            z_n = norm.apply(z)
            if step % cfg.dm_every == 0:
                loss_dm = dm_loss(s_real, s_fake, z_n, y, times, cfg.dm_cfg, generator=noise)
                _finite(loss_dm, "DM loss", step, stage)
                loss = loss + cfg.dm_weight * loss_dm
                logs["dm"] = loss_dm.item()
        _finite(loss, "total tokenizer loss", step, stage)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(ae_params)
        nn.utils.clip_grad_norm_(ae_params, cfg.grad_clip)
        opt.step()
        ema_update(ema_enc, enc, cfg.ema_decay)
        ema_update(ema_dec, dec, cfg.ema_decay)

        # ---- 2. discriminator (hinge, on augmented images)
        if recon.gan_active(step):
            loss_d = recon.discriminator_loss(x, rec, noise)
            _finite(loss_d, "discriminator loss", step, stage)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients(recon.disc.parameters())
            opt_d.step()
            logs["d"] = loss_d.item()

        # ---- 3. S_fake: flow matching on the current latents sg(z_n), every step
        if dm:
            loss_f = flow_matching_loss(s_fake, z_n.detach(), y, fm_times, cfg.label_dropout, noise)
            _finite(loss_f, "S_fake flow-matching loss", step, stage)
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            average_gradients(s_fake.parameters())
            nn.utils.clip_grad_norm_(s_fake.parameters(), cfg.grad_clip)
            opt_f.step()
            logs["fake"] = loss_f.item()

        # ---- log: window means every log_every steps
        for k, v in logs.items():
            window[k].append(v)
        if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step == cfg.steps - 1):
            rows.append({"step": step + 1, **{k: sum(v) / len(v) for k, v in window.items()},
                         "seconds": round(time.time() - t0, 2)})
            window.clear()
        log_progress(stage, step, cfg.steps, loss.item(), t0, cfg.log_every if D.rank() == 0 else 0)
        resume.maybe_save(step + 1, cfg.steps, modules, optimizers, g,
                          {"rows": rows, "window": dict(window), **({"before": before} if dm and cfg.score_n else {})},
                          noise)

    seconds = time.time() - t0
    ema_enc.eval(), ema_dec.eval()
    terms = recon.loss_terms()
    terms["gan"] = terms["gan"] and cfg.steps > cfg.tokenizer.gan_start  # did it actually run
    history = {"stage": stage, "losses": rows, "loss_terms": terms, "start": start.record,
               "config": asdict(cfg), "seconds": seconds,
               "img_per_s": (cfg.steps - first) * cfg.batch / max(seconds, 1e-9), "resumed_from": first,
               "ema": {"decay": cfg.ema_decay, "returned": "EMA encoder and decoder"}}
    if enc.variational:
        history["regulariser"] = {"kind": "KL to N(0, I)", "kl_weight": cfg.kl_weight}
    if dm:
        history["regulariser"] = {"kind": "distribution matching", "dm_every": cfg.dm_every,
                                  "dm_weight": cfg.dm_weight, "dm_cfg": cfg.dm_cfg, "t_range": [cfg.t0, cfg.t1]}
        history["norm"] = norm.to_dict()
        if cfg.score_n:
            after = dm_score(ref, norm.apply(encode(ema_enc, score_x)), seed=cfg.seed)
            history["dm_score"] = {"before": before, "after": after,
                                   "space": "normalised latents; ref = prior samples, x = encoder on train images"}
    return ema_enc, ema_dec, (s_fake.eval() if dm else None), history
