"""Memory per GPU of a study's training stages, estimated on the meta device (nothing is allocated).

Training here is data parallel without sharding (bench/dmvae/loop.py): every GPU holds every
trained net in full, so the model state per GPU does not depend on the number of GPUs; only the
activations do, through the per-GPU batch (global batch / GPUs). Per stage, in bytes:

- model state: fp32 weights (4 B/param), fp32 gradients (4), AdamW's two moments (8) and an fp32 EMA
  copy (4) for every net the stage trains with an EMA (teacher, generator, tokenizer), weights only
  for the frozen S_real, weights + grads + AdamW for S_fake and the PatchGAN (no EMA).
- activations: the tensors autograd saves for backward in one forward at the per-GPU batch, summed
  (torch.autograd.graph.saved_tensors_hooks on the meta device, fp32: bf16 autocast stores most of them
  at half the size). Attention runs through PyTorch's CPU/meta dispatch here, whose math path may keep
  the (tokens x tokens) attention matrix that flash attention on a GPU does not save (measured on one
  DiT-L block at batch 32 and 256 tokens: 256 MiB of its saved tensors), so for the DiTs this is an
  upper-side estimate. Temporaries, the allocator's fragmentation, the CUDA context and
  the DM stage's no-grad score-net passes are excluded.
"""
from __future__ import annotations

import contextlib

import torch

from bench.core.dit import build_dit
from bench.core.flow import TimeSampler, flow_matching_loss
from bench.dmvae.autoencoder import PatchDiscriminator, build_tokenizer

GiB = 2 ** 30


def _params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@contextlib.contextmanager
def _saved_bytes(out: list, *modules):
    """The bytes of the storages autograd saves inside the block, into out[0]: each storage once (views of
    one tensor share it), the modules' own parameters left out (they are model state, not activations)."""
    params = {p.untyped_storage()._cdata for m in modules for p in m.parameters()}  # storage identity
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params:
            seen[st._cdata] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    out[0] = sum(seen.values())


def _dit_activations(size: str, patch: int, latent_shape, num_classes: int, batch: int) -> int:
    net = build_dit(size, latent_shape, num_classes, patch)
    x = torch.zeros((batch, *latent_shape), device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    out = [0]
    with _saved_bytes(out, net):
        t = torch.rand(batch, device="meta")
        net(x, t, y)
    return out[0]


def _tokenizer_activations(image_shape, latent_shape, tok, batch: int) -> int:
    enc, dec = build_tokenizer(image_shape, latent_shape, tok)
    disc = PatchDiscriminator(image_shape[0], tok.disc_width, tok.disc_layers)
    out = [0]
    with _saved_bytes(out, enc, dec, disc):
        x = torch.zeros((batch, *image_shape), device="meta")
        rec = dec(enc(x))
        disc(rec)  # the generator's GAN term
    return out[0]


def estimate(cfg, gpus: int = 8) -> dict:
    """Per-GPU bytes of each training stage of a StudyConfig (see the module doc), on the meta device."""
    image_shape = (3 if cfg.dataset in ("imagefolder", "cifar10") else 1, cfg.resolution, cfg.resolution)
    latent_shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    k = 1000 if cfg.dataset == "imagefolder" else 10
    with torch.device("meta"):
        teacher = build_dit(cfg.teacher.net, latent_shape, k, cfg.teacher.patch)
        generator = build_dit(cfg.generator.net, latent_shape, k, cfg.generator.patch)
        enc, dec = build_tokenizer(image_shape, latent_shape, cfg.dmvae.tokenizer)
        disc = PatchDiscriminator(image_shape[0], cfg.dmvae.tokenizer.disc_width, cfg.dmvae.tokenizer.disc_layers)
    p_teacher, p_gen, p_tok, p_disc = _params(teacher), _params(generator), _params(enc, dec), _params(disc)
    per_gpu = {s: getattr(cfg, s).batch // gpus for s in ("teacher", "pretrain", "dmvae", "generator")}

    def train(p: int, ema: bool) -> int:  # weights + grads + AdamW moments (+ EMA), fp32
        return p * (16 + (4 if ema else 0))

    with torch.device("meta"):
        act = {"teacher": _dit_activations(cfg.teacher.net, cfg.teacher.patch, latent_shape, k, per_gpu["teacher"]),
               "generator": _dit_activations(cfg.generator.net, cfg.generator.patch, latent_shape, k,
                                             per_gpu["generator"]),
               "tokenizer": _tokenizer_activations(image_shape, latent_shape, cfg.dmvae.tokenizer, per_gpu["dmvae"]),
               "s_fake": _dit_activations(cfg.teacher.net, cfg.teacher.patch, latent_shape, k, per_gpu["dmvae"])}
    stages = {
        "teacher": {"state": train(p_teacher, ema=True), "activations": act["teacher"]},
        "dmvae": {"state": 4 * p_teacher + train(p_teacher, ema=False) + train(p_tok, ema=True)
                  + train(p_disc, ema=False),
                  # the tokenizer turn's backward ends before S_fake's own step, so the larger of the two
                  "activations": max(act["tokenizer"], act["s_fake"]),
                  "activations_tokenizer_gib": round(act["tokenizer"] / GiB, 2),
                  "activations_s_fake_gib": round(act["s_fake"] / GiB, 2)},
        "generator": {"state": train(p_gen, ema=True), "activations": act["generator"]},
    }
    for s in stages.values():
        s["total"] = s["state"] + s["activations"]
        s.update({f"{k}_gib": round(s[k] / GiB, 2) for k in ("state", "activations", "total")})
    return {"gpus": gpus, "per_gpu_batch": per_gpu,
            "params": {"score_net": p_teacher, "generator": p_gen, "tokenizer": p_tok, "discriminator": p_disc},
            "stages": stages, "peak_gib": max(s["total_gib"] for s in stages.values()),
            "method": "meta device: fp32 weights/grads/AdamW/EMA + saved activations of one forward (bench/memory_estimate.py)"}
