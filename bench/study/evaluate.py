"""Evaluation of one prior's run (docs/method.md 3.6 and section 6): reconstruction, generation, structure.

- rFID-N, PSNR, SSIM: the DMVAE's reconstructions of N held-out images (a fixed-seed class-balanced
  subset of the held-out split) against the Inception statistics of the same images.
- gFID-N: N samples per sampling seed (labels i mod K, noise seeded per index: bench/dmvae/generator.py),
  against the held-out reference statistics; mean and std over >= 2 seeds. KID and precision/recall
  on the same features (per seed, and their mean).
- Convergence: gFID at every generator checkpoint, first seed, `convergence_n` samples (the last point
  is the first `convergence_n` samples of the final model's first seed, identical by construction).
- Structure: kNN / linear-probe / silhouette and t-SNE (fixed seeds) of reference latents (p_r draws
  with their labels) and of the DMVAE's normalised latents of held-out images.
Numbers are only written when measured; a non-finite one stops the prior (runner.py marks it failed).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.cache import Cache
from bench.dmvae import generate, load_checkpoint
from bench.metrics import fid, matching, structure
from bench.metrics.image import SSIM_SETTINGS, psnr, ssim
from bench.study.config import EvalConfig

SAMPLER = "Euler ODE (bench/core/flow.py sample_ode), EMA weights, fp32"


def held_out(split, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-seed, class-balanced subset of n images of a split, in class-interleaved order."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(split.labels)
    per = [torch.nonzero(split.labels == c).flatten() for c in classes]
    per = [idx[torch.randperm(len(idx), generator=g)] for idx in per]
    order = [idx[i] for i in range(max(map(len, per))) for idx in per if i < len(idx)]  # round robin
    keep = torch.stack(order[:n])
    return split.images[keep], split.labels[keep]


def finite_or_raise(obj, where: str = "results"):
    """Walk a JSON-like record; a NaN/Inf anywhere is an error (it must never enter results.json)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise FloatingPointError(f"non-finite value in {where}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            finite_or_raise(v, f"{where}.{k}")
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            finite_or_raise(v, f"{where}[{i}]")
    return obj


def mean_std(values: list[float]) -> dict:
    """Mean and sample std (ddof 1; 0 for one value) of per-sampling-seed numbers."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


@torch.no_grad()
def reconstruction(encoder, decoder, images: torch.Tensor, ref: dict, cfg: EvalConfig, cache: Cache,
                   grid_pairs: int = 20, columns: int = 10, progress=None) -> tuple[dict, torch.Tensor]:
    """rFID-N, PSNR and SSIM of the tokenizer on held-out images; and a grid of the first
    `grid_pairs` images (class-interleaved, so one per class per row) above their reconstructions."""
    dev = next(encoder.parameters()).device
    rec = torch.cat([decoder(encoder(x.to(dev))).clamp(-1, 1).float().cpu() for x in images.split(cfg.batch)])
    feats = fid.inception_features(rec, cfg.batch, cache, progress)
    pairs = [t for lo in range(0, min(grid_pairs, len(images)), columns)
             for t in (images[lo:lo + columns], rec[lo:lo + columns])]
    grid = image_grid(torch.cat(pairs), columns)
    return {"rfid": fid.fid_against_reference(feats, ref), "psnr": psnr(rec, images), "ssim": ssim(rec, images),
            "n": len(images)}, grid


@torch.no_grad()
def generation(model, checkpoints: list[dict], decoder, norm, num_classes: int, gen_cfg, ref: dict,
               cfg: EvalConfig, cache: Cache, log=print, keep: int = 0, progress=None) -> tuple[dict, torch.Tensor]:
    """gFID-N over the sampling seeds (+ KID, precision/recall) and the convergence curve, with the
    convergence rule applied to its last two points (`converged`).

    Also returns the first `keep` images of the first seed (the sample grid shows the very samples
    that were scored).
    """
    sample = sampling(cfg, decoder, norm, cfg.cfg_scale)
    per_seed, first_feats, kept = [], None, None
    for s in cfg.seeds:
        t0 = time.time()
        images, _ = generate(model, cfg.gfid_n, num_classes, s, **sample)
        feats = fid.inception_features(images, cfg.batch, cache, progress)
        if first_feats is None:
            first_feats, kept = feats, images[:keep]
        row = {"seed": s, "gfid": fid.fid_against_reference(feats, ref), **fid.kid(feats, ref["features"], seed=s),
               **fid.precision_recall(ref["features"], feats)}
        per_seed.append(row)
        log(f"    gFID-{cfg.gfid_n} seed {s}: {row['gfid']:.2f} ({time.time() - t0:.0f} s)")
    convergence = []
    for cp in checkpoints[:-1]:
        net = load_checkpoint(cp, (model.in_channels, model.input_size, model.input_size), num_classes, gen_cfg)
        images, _ = generate(net.to(next(model.parameters()).device), cfg.convergence_n, num_classes,
                             cfg.seeds[0], **sample)
        convergence.append({"epoch": cp["epoch"], "step": cp["step"], "fraction": cp["fraction"],
                            "gfid": fid.fid_against_reference(fid.inception_features(images, cfg.batch, cache,
                                                                                     progress), ref)})
        log(f"    convergence epoch {cp['epoch']:.2f}: gFID-{cfg.convergence_n} {convergence[-1]['gfid']:.2f}")
    last = checkpoints[-1]
    convergence.append({"epoch": last["epoch"], "step": last["step"], "fraction": last["fraction"],
                        "gfid": fid.fid_against_reference(first_feats[:cfg.convergence_n], ref)})
    return {"gfid": {**mean_std([r["gfid"] for r in per_seed]), "seeds": list(cfg.seeds), "n": cfg.gfid_n},
            "kid": {**mean_std([r["kid_mean"] for r in per_seed]), "subset_size": per_seed[0]["subset_size"],
                    "subsets": per_seed[0]["subsets"]},
            "precision_recall": {"precision": mean_std([r["precision"] for r in per_seed]),
                                 "recall": mean_std([r["recall"] for r in per_seed]), "k": fid.PR_K},
            "per_seed": per_seed, "convergence": convergence, "convergence_n": cfg.convergence_n,
            "converged": converged(convergence, cfg.converged_within)}, kept


def sampling(cfg: EvalConfig, decoder, norm, scale: float) -> dict:
    """generate()'s keyword arguments of the gFID samples at CFG `scale` (Table 1: cfg.cfg_scale; the guidance
    sweep, bench/study/guidance.py: each of cfg.cfg_scales): one sampler convention for both."""
    return dict(steps=cfg.sample_steps, cfg=scale, decoder=decoder, norm=norm, batch_size=cfg.batch, shift=cfg.shift)


def converged(curve: list[dict], within: float) -> dict:
    """The generator's convergence rule: its last checkpoint's gFID within `within` (relative) of the one before."""
    rule = (f"converged if the last checkpoint's gFID-N is within {within:.0%} of the previous checkpoint's "
            f"(same N, same sampling seed)")
    if len(curve) < 2:
        return {"converged": None, "rule": rule, "note": "fewer than two checkpoints: not judged"}
    prev, last = curve[-2]["gfid"], curve[-1]["gfid"]
    change = (last - prev) / prev
    return {"converged": bool(abs(change) <= within), "rule": rule, "previous": prev, "last": last,
            "relative_change": change}


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> one uint8 grid (rows*H, columns*W, C), 1-pixel white gaps."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full((c, rows * (h + 1) - 1, columns * (w + 1) - 1), 1.0)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[:, r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = img
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def latent_structure(latents: torch.Tensor, labels: torch.Tensor, cfg: EvalConfig, seed: int) -> tuple[dict, dict]:
    """Structure metrics and the t-SNE coordinates (figure data) of one latent set."""
    metrics = structure.structure_metrics(latents, labels, seed)
    emb, y = structure.tsne_embedding(latents, labels, cfg.tsne_per_class, seed)
    return metrics, {"xy": torch.from_numpy(emb), "labels": torch.from_numpy(y)}


def settings(cfg: EvalConfig, cache: Cache) -> dict:
    """Every evaluation convention, for results.json's meta block."""
    return {"fid": fid.evaluation_settings(cfg.gfid_n, cfg.ref_split, cache),
            "reference": {"split": cfg.ref_split, "n": cfg.ref_n, "selection": "fixed-seed class-balanced subset",
                          "statistics": "Inception pool3 of the held-out images, cached by content"},
            "gfid_reference": ("the held-out reference images (as rFID)" if not cfg.reference_batch else
                               {"batch": cfg.reference_batch, "layout": "ADM .npz (arr_0 uint8 NHWC)",
                                "fid": "against the batch's stored mu/sigma when it has them and N > 2048 (the "
                                       "published gFID-50k protocol); else against its images' features",
                                "precision_recall_kid": "against its images' pool3 features",
                                "not_affected": "rFID, the per-class FID and the matching use the held-out images"}),
            "rfid": {"n": cfg.ref_n, "images": "the reference images, reconstructed by the EMA encoder/decoder"},
            "gfid": {"n": cfg.gfid_n, "seeds": list(cfg.seeds), "labels": "class-balanced: sample i has label i mod K",
                     "noise": "one torch.Generator per sample index (seed * 1_000_003 + i)",
                     "sampler": SAMPLER, "steps": cfg.sample_steps, "cfg_scale": cfg.cfg_scale,
                     "time_shift": cfg.shift, "spread": "mean and sample std (ddof 1) over the sampling seeds"},
            "convergence": {"n": cfg.convergence_n, "seed": cfg.seeds[0],
                            "x": "epoch = step * batch / train images"},
            "image": {"psnr": "mean per-image PSNR on [0, 1]", "ssim": SSIM_SETTINGS},
            "structure": {**structure.SETTINGS, "n": cfg.structure_n, "tsne_per_class": cfg.tsne_per_class,
                          "reference": "p_r draws with their labels", "dmvae": "normalised encoder latents of held-out images"},
            "matching": {**matching.SETTINGS, "n": cfg.match_n,
                         "x": "encoder latents of held-out images (start and final encoder)",
                         "teacher_samples": f"S_real's Euler ODE samples ({cfg.sample_steps} steps), p_r's labels"},
            "convergence_rule": {"within": cfg.converged_within, "points": "last two generator checkpoints"}}
