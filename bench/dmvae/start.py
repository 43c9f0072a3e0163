"""The encoder start of the DM stage (paper section 3.3): where q(z) begins.

- "reference-ae": for priors that have an image encoder (a frozen feature net + the stage-1
  projector, or an autoencoder: `prior.has_image_encoder`). The paper starts the DMVAE encoder
  from that stage-1 reference AE, so q(z) = p_r at step 0 and the DM term only has to keep it
  there while reconstruction improves. Here the reference encoder is a ViT / ResNet / KL-VAE plus
  a projector, not the conv encoder every row shares, so we DISTIL it: the shared conv encoder
  and decoder are trained on L1 + L2 reconstruction plus distill_weight * MSE(E(x), E_ref(x)),
  with E_ref(x) computed once for `distill_images` train images. One architecture for all rows,
  q(z) close to p_r at the start; how close is measured (the matching statistics "before").
- "plain-ae": reconstruction only (L1 + L2, no GAN). The paper's start for priors without an
  image encoder (gaussian, gmm, text), where the DM term has to carry q(z) to p_r. As an
  ablation (`--set start=plain-ae`) every row starts from it, and then it is shared by all rows.

| preset | steps | batch | lr | distill images |
|---|---|---|---|---|
| smoke | 20   | 8   | 1e-3 | 256 |
| cpu   | 300  | 64  | 1e-3 | 5k  |
| gpu   | 5000 | 128 | 5e-4 | 50k |
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import distributed as D
from bench.compute import Compute, ComputeConfig
from bench.config import require
from bench.core.conv import Decoder, Encoder
from bench.dmvae.autoencoder import TokenizerConfig, build_tokenizer
from bench.dmvae.loop import average_gradients, shard_batch
from bench.image_store import subset
from bench.tracking import Tracker
from bench.training import check_finite, cosine_lr, log_progress

STARTS = ("auto", "plain-ae", "reference-ae")  # auto: reference-ae where the prior has an image encoder


@dataclass(frozen=True)
class PretrainConfig:
    """Training of the encoder start (reconstruction, plus distillation for reference-ae)."""

    steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    distill_weight: float = 10.0   # reference-ae: weight of MSE(E(x), E_ref(x)) (latents have unit variance)
    distill_images: int = 5000     # train images whose reference latents are computed for distillation
    seed: int = 0
    log_every: int = 100

    def __post_init__(self):
        require(self, positive=("batch", "lr", "distill_images"),  # steps = 0: a freshly initialised AE
                non_negative=("steps", "distill_weight", "seed", "log_every"))


PRETRAIN_PRESETS = {
    "smoke": PretrainConfig(steps=20, batch=8, distill_images=256, log_every=0),
    "cpu": PretrainConfig(),
    "gpu": PretrainConfig(steps=5000, batch=128, lr=5e-4, distill_images=50_000, log_every=500),
}


@dataclass
class Start:
    """A trained (encoder, decoder) pair to start the DM stage from, and what it is."""

    encoder: Encoder
    decoder: Decoder
    record: dict


def resolve_start(requested: str, prior) -> str:
    """The start a prior (class or instance) gets: `auto` follows section 3.3 (reference-ae iff it has an image encoder)."""
    if requested not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got '{requested}'")
    if requested == "auto":
        return "reference-ae" if prior.has_image_encoder else "plain-ae"
    if requested == "reference-ae" and not prior.has_image_encoder:
        raise ValueError(f"prior '{prior.info.name}' has no image encoder, so it cannot start from a reference AE; "
                         f"use --set start=auto or start=plain-ae")
    return requested


def pretrain_autoencoder(images: torch.Tensor, latent_shape: tuple[int, int, int], cfg: PretrainConfig,
                         tokenizer: TokenizerConfig, reference=None, compute: ComputeConfig | None = None,
                         track: Tracker | None = None) -> Start:
    """The plain-AE start; with `reference` (images -> reference latents (N, C, h, w)) the reference-ae start.

    `compute`: the GPU settings (bench/compute.py); `track`: the experiment logs (bench/tracking.py)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    device = D.device()
    cx = Compute(compute, "start", device)
    pool, target = torch.arange(len(images)), None
    if reference is not None:  # the reference encoder's latents of a fixed subset, computed once
        pool = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed + 7))[:cfg.distill_images]
        with torch.no_grad():
            target = reference(subset(images, pool)).float().cpu()  # (n, C, h, w)
    enc, dec = (m.to(device) for m in build_tokenizer(tuple(images.shape[1:]), latent_shape, tokenizer))
    params = [*enc.parameters(), *dec.parameters()]
    opt = cx.adamw(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    logs, meter, track = {}, cx.meter(), track or Tracker()
    with cx.session(), track.session(0, cfg.steps, cfg.batch):
        t0 = time.time()
        for step in range(cfg.steps):
            pick = shard_batch(torch.randint(len(pool), (cfg.batch,), generator=g))  # same global batch on all ranks
            x = cx.fetch(images, pool[pick])
            with meter.step():
                with cx.autocast():
                    z = enc(x)
                    rec = dec(z)
                    loss = (rec - x).abs().mean() + tokenizer.l2_weight * (rec - x).pow(2).mean()
                    if target is not None:
                        distill = F.mse_loss(z, cx.fetch(target, pick))
                logs["rec"] = loss.item()
                if target is not None:
                    loss = loss + cfg.distill_weight * distill
                    logs["distill_mse"] = distill.item()
                check_finite(loss, step, "encoder start: loss")
                for grp in opt.param_groups:
                    grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, min(50, cfg.steps // 10 + 1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params)
                grad_norm = nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            track.step(step + 1, loss=logs, lr=opt.param_groups[0]["lr"], grad_norm=grad_norm)
            log_progress("encoder start", step, cfg.steps, loss.item(), t0, cfg.log_every if D.rank() == 0 else 0)
        seconds = time.time() - t0
    record = {"kind": "reference-ae" if reference is not None else "plain-ae", "config": asdict(cfg),
              "loss_terms": {"l1": True, "l2": tokenizer.l2_weight > 0, "gan": False, "distill": reference is not None},
              "final": logs, "seconds": seconds, "img_per_s": cfg.steps * cfg.batch / max(seconds, 1e-9),
              "compute": cx.record(meter, cfg.steps * cfg.batch, seconds, D.world_size())}
    if reference is not None:
        record["distilled_from"] = "the prior's stage-1 reference encoder (feature net + projector, or autoencoder)"
    return Start(enc.eval(), dec.eval(), record)
