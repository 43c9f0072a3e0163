"""One optimiser step of the tokenizer (encoder + decoder) and then of its discriminator.

Both tokenizer loops call it: the DM stage (dm_stage.py) on every k-th iteration with
L_rec + lambda_DM * loss_DM, the KL-VAE baseline (vae_baseline.py) on every iteration with
L_rec + KL. What it owns is the mechanics they share: the optimisers, the EMA copies, gradient
averaging over ranks, clipping, and the discriminator's own step once the GAN has started.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from bench.compute import Compute
from bench.core.ema import ema_update, make_ema
from bench.core.conv import Decoder, Encoder
from bench.dmvae.autoencoder import ReconstructionLoss, TokenizerConfig
from bench.dmvae.loop import average_gradients
from bench.training import check_finite, clip_gradients


class TokenizerUpdate:
    """Trainable copies of a start (encoder, decoder), their EMA, the PatchGAN and both optimisers."""

    def __init__(self, encoder: Encoder, decoder: Decoder, image_channels: int, tok: TokenizerConfig,
                 lr: float, ema_decay: float, grad_clip: float, device, stage: str, compute: Compute | None = None):
        # copies: the caller's (cached) start stays as it was, ready for the next prior
        self.enc, self.dec = (copy.deepcopy(m).to(device).train() for m in (encoder, decoder))
        self.ema_enc, self.ema_dec = make_ema(self.enc), make_ema(self.dec)
        self.recon = ReconstructionLoss(image_channels, tok).to(device)
        self.params = [*self.enc.parameters(), *self.dec.parameters()]
        self.compute = compute or Compute(None, stage, device)  # bench/compute.py: autocast, fused AdamW
        self.opt = self.compute.adamw(self.params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.opt_d = (self.compute.adamw(self.recon.disc.parameters(), lr=tok.disc_lr, betas=(0.5, 0.9),
                                        weight_decay=0.0) if self.recon.disc is not None else None)  # LDM's D betas
        self.ema_decay, self.grad_clip, self.stage = ema_decay, grad_clip, stage

    def modules(self) -> dict:
        return {"enc": self.enc, "dec": self.dec, "ema_enc": self.ema_enc, "ema_dec": self.ema_dec,
                "recon": self.recon}

    def optimizers(self) -> dict:
        return {"opt": self.opt, **({"opt_d": self.opt_d} if self.opt_d is not None else {})}

    def step(self, x: torch.Tensor, z: torch.Tensor, regulariser: torch.Tensor | None, gan_step: int, lr: float,
             noise, logs: dict) -> torch.Tensor:
        """L_rec(x, G(z)) (+ regulariser, already weighted) -> one AdamW step of E and G, EMA, then D.

        `z` is E(x) with its graph; `gan_step` is the step the GAN's start is compared with. Returns the
        gradient norm of E and G before clipping (for the experiment logs, bench/tracking.py).
        """
        with self.compute.autocast():
            rec = self.dec(z)
            loss, parts = self.recon.generator_loss(x, rec, self.dec.last_layer, gan_step, noise)
        logs.update(parts, rec=loss.item())
        check_finite(loss, gan_step, f"{self.stage} stage: reconstruction loss")
        if regulariser is not None:
            loss = loss + regulariser
        check_finite(loss, gan_step, f"{self.stage} stage: total tokenizer loss")
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params)
        grad_norm = clip_gradients(self.params, self.grad_clip)
        self.opt.step()
        ema_update(self.ema_enc, self.enc, self.ema_decay)
        ema_update(self.ema_dec, self.dec, self.ema_decay)
        if self.recon.gan_active(gan_step):  # hinge loss of D on augmented real vs sg(reconstruction)
            with self.compute.autocast():
                loss_d = self.recon.discriminator_loss(x, rec, noise)
            check_finite(loss_d, gan_step, f"{self.stage} stage: discriminator loss")
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients(self.recon.disc.parameters())
            self.opt_d.step()
            logs["d"] = loss_d.item()
        return grad_norm

    def finished(self) -> tuple[Encoder, Decoder]:
        """The EMA encoder and decoder, in eval mode: what the stage returns."""
        return self.ema_enc.eval(), self.ema_dec.eval()
