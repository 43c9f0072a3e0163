"""The vae row (Table 1's VAE-baseline): the same tokenizer and loss with a KL term, no distribution matching.

Per iteration, on one batch: (mean, logvar) = E(x), z = mean + sigma * eps, one AdamW step of E and
G on L_rec(x, G(z)) + kl_weight * KL(q(z|x) || N(0, I)) per pixel, EMA, then the PatchGAN once
started (tokenizer_update.py). Started from scratch, as a KL-VAE usually is.

Budget: the same number of tokenizer updates as a DM row gets in total, i.e. the encoder start's
steps plus the DM stage's tokenizer turns (pretrain.steps + ceil(dmvae.steps / dm_every)); the GAN
starts after the same number of tokenizer updates as in a DM row. Its LatentNorm is measured on
its own latents (there is no p_r).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, replace

import torch

from bench import distributed as D
from bench.dmvae.autoencoder import build_tokenizer
from bench.dmvae.dm_stage import DMVAEConfig, encode
from bench.dmvae.latent_norm import LatentNorm, measure_norm
from bench.dmvae.loop import Resumable, shard_batch, step_noise, warmup_lr
from bench.dmvae.start import PretrainConfig
from bench.dmvae.tokenizer_update import TokenizerUpdate
from bench.tracking import Tracker
from bench.training import log_progress


def baseline_budget(cfg: DMVAEConfig, pretrain: PretrainConfig) -> tuple[int, int]:
    """(tokenizer updates, update at which the GAN starts): a DM row's totals."""
    turns = math.ceil(cfg.steps / cfg.dm_every)
    return pretrain.steps + turns, pretrain.steps + math.ceil(cfg.tokenizer.gan_start / cfg.dm_every)


def train_vae_baseline(images: torch.Tensor, labels: torch.Tensor, latent_shape: tuple[int, int, int],
                       cfg: DMVAEConfig, pretrain: PretrainConfig, checkpoint: str | None = None,
                       checkpoint_every: int = 0, track: Tracker | None = None
                       ) -> tuple[torch.nn.Module, torch.nn.Module, LatentNorm, dict]:
    """KL-VAE training of the shared tokenizer: (EMA encoder, EMA decoder, its LatentNorm, history);
    `track`: the experiment logs (bench/tracking.py; off by default)."""
    steps, gan_start = baseline_budget(cfg, pretrain)
    tok_cfg = replace(cfg.tokenizer, gan_start=gan_start)
    torch.manual_seed(cfg.seed)  # the initial weights must not depend on what ran before in this process
    g = torch.Generator().manual_seed(cfg.seed)
    device = D.device()
    enc0, dec0 = build_tokenizer(tuple(images.shape[1:]), latent_shape, tok_cfg, variational=True)
    tok = TokenizerUpdate(enc0, dec0, images.shape[1], tok_cfg, cfg.lr, cfg.ema_decay, cfg.grad_clip, device,
                          "VAE baseline")
    noise = step_noise(cfg.seed)
    resume = Resumable(checkpoint, checkpoint_every)
    first, extra = resume.load(tok.modules(), tok.optimizers(), g, noise)
    window, rows = defaultdict(list, extra.get("window", {})), extra.get("rows", [])
    track = track or Tracker()
    with track.session(first, steps, cfg.batch):
        t0 = time.time()
        for step in range(first, steps):
            idx = shard_batch(torch.randint(len(images), (cfg.batch,), generator=g))  # same global batch on all ranks
            x = images[idx].to(device)
            mean, logvar = tok.enc.posterior(x)  # (B, C, h, w) each
            z = mean + (0.5 * logvar).exp() * noise.randn(mean.shape, mean.device, mean.dtype)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
            logs = {"kl": kl.item()}
            grad_norm = tok.step(x, z, cfg.kl_weight * kl, step, warmup_lr(step, cfg.lr, cfg.warmup), noise, logs)
            for k, v in logs.items():
                window[k].append(v)
            done = step + 1
            track.step(done, loss=logs, lr=tok.opt.param_groups[0]["lr"], grad_norm=grad_norm)
            if cfg.log_every and (done % cfg.log_every == 0 or done == steps):
                rows.append({"step": done, **{k: sum(v) / len(v) for k, v in window.items()},
                             "seconds": round(time.time() - t0, 2)})
                window.clear()
            log_progress("VAE baseline", step, steps, kl.item(), t0, cfg.log_every if D.rank() == 0 else 0)
            resume.maybe_save(done, steps, tok.modules(), tok.optimizers(), g, {"rows": rows, "window": dict(window)},
                              noise)
    seconds = time.time() - t0
    enc, dec = tok.finished()
    history = {"stage": "VAE baseline", "losses": rows, "loss_terms": tok.recon.loss_terms(),
               "start": {"kind": "scratch (KL-VAE baseline)"}, "config": asdict(cfg), "seconds": seconds,
               "img_per_s": (steps - first) * cfg.batch / max(seconds, 1e-9), "resumed_from": first,
               "tokenizer_updates": steps, "gan_start": gan_start,
               "budget": "pretrain.steps + ceil(dmvae.steps / dm_every) tokenizer updates, as a DM row in total",
               "ema": {"decay": cfg.ema_decay, "returned": "EMA encoder and decoder"},
               "regulariser": {"kind": "KL to N(0, I)", "kl_weight": cfg.kl_weight}}
    history["loss_terms"]["gan"] = history["loss_terms"]["gan"] and steps > gan_start
    norm = measure_norm(encode(enc, images[:4096]), "vae baseline encoder latents (train images)")
    return enc, dec, norm, history
