"""The guidance sweep (CFG) of one prior's generator, and per-class FID (`--set eval.cfg_scales=1,1.5,2,3`).

Table 1 stays at eval.cfg_scale (1: no guidance, as the paper's Table 1). The sweep draws Table 1's
samples again at each scale in eval.cfg_scales: the same class-balanced labels (i mod K), the same
per-index noise, the same sampling seeds, N, sampler and reference statistics (evaluate.sampling);
only the guidance weight w of v_u + w (v_c - v_u) (bench/core/flow.py) differs. So the sweep at
w = eval.cfg_scale reproduces Table 1's per-seed gFID exactly. Per scale: gFID-N, precision and
recall (k = 3) per sampling seed, and their mean and sample std over the seeds.

Per-class FID (bench/metrics/per_class.py): per class, the first sampling seed's samples of that
class against the reference (held-out) images of that class, beside its floor: the class-balanced
real train images of the FID floor (runner.py Context.floor_images: N real images, so the same
per-class count as the samples) of that class against the same reference images.
Decision: per-class FID is computed at EVERY swept scale. It needs no extra Inception pass (the
features of each scale's first seed are there already) and shows whether guidance helps the
worst classes; the report ranks the classes (best and worst) at the sweep's scale equal to
eval.cfg_scale (Table 1's samples, unguided by default), or the smallest swept scale when that
one is not swept, and shows the ranked classes' FID at every scale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.cache import Cache
from bench.dmvae import generate
from bench.metrics import fid
from bench.metrics.per_class import MIN_PER_CLASS, class_counts, class_fids
from bench.study.config import EvalConfig
from bench.study.evaluate import SAMPLER, mean_std, sampling

VERSION = 1  # bump when what the sweep computes changes (it is in the stage key)
# the evaluation settings that change the sweep's numbers (its stage key); batch moves samples by float
# rounding only, but the check that scale 1.0 equals Table 1 needs the same batch
KEY_SETTINGS = ("ref_split", "ref_n", "gfid_n", "seeds", "sample_steps", "shift", "cfg_scales", "batch",
                "reference_batch")


@dataclass(frozen=True)
class RealSets:
    """The real images the sweep is scored against, as Inception features with their labels."""

    reference: dict                 # fid.reference() of the held-out images (per-class FID reads its classes)
    reference_labels: torch.Tensor
    floor: torch.Tensor             # features of the FID floor's class-balanced real train images
    floor_labels: torch.Tensor
    class_names: list[str]
    generation: dict | None = None  # what gFID and precision/recall read against (Table 1's): None = reference

    @property
    def gfid_reference(self) -> dict:
        return self.reference if self.generation is None else self.generation


@torch.no_grad()
def sweep(model, decoder, norm, num_classes: int, real: RealSets, cfg: EvalConfig, cache: Cache,
          log=print, progress=None) -> dict:
    """The sweep's record: per scale gFID / precision / recall over the sampling seeds and per-class FID,
    and the per-class counts and floors (shared by the scales)."""
    per_scale, labels = [], None
    for scale in cfg.cfg_scales:
        row, labels = scale_row(model, decoder, norm, num_classes, scale, real, cfg, cache, log, progress)
        per_scale.append(row)
    return {"scales": list(cfg.cfg_scales), "table1_scale": cfg.cfg_scale, "n": cfg.gfid_n, "seeds": list(cfg.seeds),
            "k": fid.PR_K, "per_scale": per_scale, "per_class": per_class_floor(labels, num_classes, real, cfg)}


def scale_row(model, decoder, norm, num_classes: int, scale: float, real: RealSets, cfg: EvalConfig, cache: Cache,
              log=print, progress=None) -> tuple[dict, torch.Tensor]:
    """One scale: per sampling seed gFID-N and precision/recall, their mean ± std, and per-class FID of
    the first seed's samples; also returns those samples' labels."""
    per_seed, first = [], None
    for s in cfg.seeds:
        t0 = time.time()
        images, labels = generate(model, cfg.gfid_n, num_classes, s, **sampling(cfg, decoder, norm, scale))
        feats = fid.inception_features(images, cfg.batch, cache, progress)
        first = first or (feats, labels)
        pr = fid.precision_recall(real.gfid_reference["features"], feats)
        per_seed.append({"seed": s, "gfid": fid.fid_against_reference(feats, real.gfid_reference),
                         "precision": pr["precision"], "recall": pr["recall"]})
        log(f"    CFG {scale:g}: gFID-{cfg.gfid_n} seed {s}: {per_seed[-1]['gfid']:.2f} ({time.time() - t0:.0f} s)")
    row = {"scale": scale, **{m: mean_std([r[m] for r in per_seed]) for m in ("gfid", "precision", "recall")},
           "per_seed": per_seed,
           "per_class_fid": class_fids(first[0], first[1], real.reference["features"], real.reference_labels,
                                       num_classes)}
    return row, first[1]


def per_class_floor(labels: torch.Tensor, num_classes: int, real: RealSets, cfg: EvalConfig) -> dict:
    """What every scale's per-class FID reads against: per class, the counts of samples, reference and
    floor images, and the floor (real train images of the class against the same reference images)."""
    return {"seed": cfg.seeds[0], "names": list(real.class_names), "n": class_counts(labels, num_classes),
            "n_ref": class_counts(real.reference_labels, num_classes),
            "n_floor": class_counts(real.floor_labels, num_classes),
            "floor": class_fids(real.floor, real.floor_labels, real.reference["features"], real.reference_labels,
                                num_classes)}


def settings(cfg: EvalConfig) -> dict:
    """The sweep's conventions, for results.json's meta.evaluation (only when a sweep is asked for)."""
    return {"scales": list(cfg.cfg_scales), "table1_scale": cfg.cfg_scale, "n": cfg.gfid_n, "seeds": list(cfg.seeds),
            "samples": "Table 1's gFID convention at each scale: labels i mod K, noise seeded per index, the same "
                       "sampling seeds, N, sampler and reference statistics; only the CFG scale differs",
            "guidance": "v = v_u + w (v_c - v_u), both branches of the generator (null label = K, trained with "
                        "label dropout); w = 1 is the conditional model alone, w = 0 the unconditional one",
            "sampler": SAMPLER, "steps": cfg.sample_steps, "time_shift": cfg.shift,
            "metrics": f"gFID-{cfg.gfid_n}, precision and recall (k = {fid.PR_K}) per sampling seed; mean and "
                       f"sample std (ddof 1) over the seeds",
            "per_class": {"samples": f"the first sampling seed's ({cfg.seeds[0]}) samples of each class, at every "
                                     f"swept scale",
                          "reference": "the held-out reference images of that class",
                          "floor": "the FID floor's class-balanced real train images of that class against the "
                                   "same reference images (same per-class count as the samples)",
                          "min_per_class": MIN_PER_CLASS,
                          "estimator": "Fréchet distance in feature form (exact below 2048 samples), float64",
                          "ranking": "the report ranks classes at the swept scale equal to table1_scale, else at "
                                     "the smallest swept scale"}}
