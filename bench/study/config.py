"""The study's configuration: one frozen dataclass and its preset table (resolved by bench/config.py).

Every stage keeps its own config class and preset table next to what it trains (bench/dmvae); a
study preset picks one row of each and adds the data, latent grid and evaluation settings. Any
knob can be overridden: `--set eval.gfid_n=2000`, `--set dmvae.tokenizer.width=32`.

| preset | data | latents | stage presets | gFID-N x seeds | ref / rFID N | convergence N | goal |
|---|---|---|---|---|---|---|---|
| smoke | Fashion-MNIST, 200 per split | 4x8x8 | smoke | 32 x 2  | 32    | 32   | <= 3 min, five priors, 2 cores |
| cpu   | Fashion-MNIST, full          | 4x8x8 | cpu   | 250 x 2 | 250   | 250  | <= 60 min cold, five priors, one training seed, 2 cores |
| gpu   | Fashion-MNIST, full          | 4x8x8 | gpu   | 5k x 3  | 10k   | 5k   | one accelerator |
| paper | ImageNet-256 ImageFolder (memmap) | 32x16x16 | paper (XL generator) | 5k x 2 | 50k | 5k | not trainable here |

Only the paper preset reads image files (imagefolder), so only it selects the memmap store
(`image_store`, bench/image_store.py); the others' Fashion-MNIST fits in memory and has no files to
map (memmap refuses it). The gpu preset with `--set dataset=imagefolder` keeps the memory store
unless `--set image_store=memmap` is given too, which it needs once the split outgrows host memory.

The cpu preset's N is set by the Inception network's cost on a CPU: measured on the 2-core
development machine at 2.3-3.6 img/s (fp32, 299x299; a 2048^2 matmul ran at 38 GFLOP/s there), so
one prior and training seed at N = 500 (rFID 500 + gFID 2 x 500 + one convergence point 250 =
1750 images) spent about 12 minutes in Inception alone; N = 250 halves that. FID depends on N:
the real-vs-real floor at the same N is reported beside it, and only equal N compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from bench.dmvae import (DMVAE_PRESETS, GENERATOR_PRESETS, PRETRAIN_PRESETS, TEACHER_PRESETS, DMVAEConfig,
                         GeneratorConfig, PretrainConfig, TeacherConfig)

from bench.compute import ComputeConfig
from bench.config import SettingError, added_later, not_hashed, require
from bench.data import DATASETS, FILE_BACKED, memmap_refusal
from bench.image_store import STORES
from bench.dmvae.start import STARTS  # paper section 3.3; bench/dmvae/start.py explains them
from bench.tracking import LogConfig
from priors.base import FEATURE_SIZES, FEATURE_SOURCES, PriorOptions
from priors.registry import get_prior


REF_SPLITS = ("test", "val")  # held-out splits (bench/data.py): never the images the tokenizer trained on
DEFAULT_PRIORS = ("gaussian", "text", "resnet", "dino", "noise")  # the paper's Table 1 rows


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation (docs/method.md section 6): every number here is recorded with the results."""

    ref_split: str = "test"        # a REF_SPLITS value: held-out split: reference statistics, rFID/PSNR/SSIM, DMVAE latents
    ref_n: int = 250               # held-out images (class-balanced): reference stats and rFID-N
    gfid_n: int = 250              # generated samples per sampling seed (gFID-N)
    seeds: tuple[int, ...] = (0, 1)  # sampling seeds: gFID is reported as mean and std over them
    convergence_n: int = 250       # samples per convergence checkpoint (first seed); <= gfid_n
    converged_within: float = 0.05  # the generator "converged" if its last two checkpoints' gFID differ by <= this
    sample_steps: int = 25         # Euler ODE steps
    cfg_scale: float = 1.0         # classifier-free guidance (1: none, as Table 1)
    cfg_scales: tuple[float, ...] = added_later((), "cfg sweep")  # guidance sweep (bench/study/guidance.py):
                                   # gFID-N and precision/recall at each scale, per-class FID; its own stage
                                   # after the evaluation, so adding it to a finished run computes only the
                                   # sweep; Table 1 stays at cfg_scale. (): no sweep
    shift: float = 1.0             # sampler time shift
    structure_n: int = 1000        # latents for kNN / linear probe / silhouette
    match_n: int = 1000            # held-out latents and p_r draws per matching statistic (and its floor)
    tsne_per_class: int = 100      # paper Fig. 4: 100 images per class
    batch: int = 50                # Inception and sampling batch: samples move only by float rounding with it
                                   # (batched matmuls sum in another order), so it is part of the stage keys
    reference_batch: str | None = added_later(None, "standard-protocol reference")  # an ADM .npz (e.g.
                                   # VIRTUAL_imagenet256_labeled.npz): gFID, KID and precision/recall
                                   # against it (FID from its stored mu/sigma when present) instead of the
                                   # held-out images; rFID, the floors' reference and per-class FID stay on
                                   # the held-out images. None: the held-out images

    def __post_init__(self):
        require(self, positive=("ref_n", "gfid_n", "converged_within", "sample_steps", "shift", "structure_n",
                                "match_n", "tsne_per_class", "batch"), non_negative=("cfg_scale",),
                choices={"ref_split": REF_SPLITS})
        for scale in self.cfg_scales:
            if not (math.isfinite(scale) and scale >= 0):
                raise SettingError("cfg_scales", "must be finite guidance scales of 0 or more (1: no guidance), "
                                   "e.g. 1,1.5,2,3", self.cfg_scales)
        if len(set(self.cfg_scales)) != len(self.cfg_scales):
            raise SettingError("cfg_scales", "must not name a scale twice", self.cfg_scales)
        object.__setattr__(self, "cfg_scales", tuple(sorted(map(float, self.cfg_scales))))  # one form: one stage key
        if len(self.seeds) < 2:
            raise ValueError("eval.seeds needs at least two sampling seeds (gFID is reported as mean and std)")
        if not 0 < self.convergence_n <= self.gfid_n:
            raise ValueError("eval.convergence_n must lie in 1 .. eval.gfid_n (the last point reuses the "
                             "first seed's samples)")
        if min(self.ref_n, self.gfid_n) < 10:
            raise ValueError("eval.ref_n and eval.gfid_n must be at least 10")
        if self.match_n < 20:
            raise ValueError("eval.match_n must be at least 20 (the two-sample test splits it in halves)")


@dataclass(frozen=True)
class StudyConfig:
    """Everything one study run depends on; its hash names the run in results.json."""

    priors: tuple[str, ...] = DEFAULT_PRIORS  # --priors: registered names or module:Class (priors/registry.py)
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    resolution: int = 32
    limit: int | None = None           # images per split, class-balanced (None: all)
    image_store: str = added_later("memory", "memmap image store")  # where the images live: memory (float32
                                       # tensors) | memmap (imagefolder only: the kept files decoded once into a
                                       # uint8 file under <cache root>/image_store, rows read and converted at
                                       # fetch time; bit-identical images; bench/image_store.py)
    data_workers: int | None = added_later(None, "memmap image store")  # memmap: decode processes (DataLoader
                                       # workers; none: one per core, at most 16; 0: in this process)
    latent_channels: int = 4
    latent_size: int = 8
    features: str = "auto"             # a priors/base.py FEATURE_SOURCES value
    weights_dir: str | None = None
    feature_size: str = "cpu"          # training budget of the locally trained feature nets (FEATURE_SIZES)
    prior: PriorOptions = field(default_factory=PriorOptions)  # settings of particular priors
    seed: int = 0                      # data split, feature nets, evaluation subsets (shared by training seeds)
    training_seeds: tuple[int, ...] = (0,)  # one teacher, start, DM stage and generator per seed: seed s adds s
                                       # to every training stage's seed; Table 1 gives mean and std over them
    start: str = "auto"                # encoder start: auto (section 3.3) | plain-ae | reference-ae
    checkpoint_every: int = 100        # steps between resumable checkpoints of every training stage
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    dmvae: DMVAEConfig = field(default_factory=DMVAEConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # GPU settings, applied on CUDA only
                                       # (bench/compute.py); they enter a stage's key only where applied
    log: LogConfig = not_hashed(default_factory=LogConfig)  # experiment logging: TensorBoard event files
                                       # (log.tensorboard=true), wandb (log.wandb=PROJECT), every log.every
                                       # steps (bench/tracking.py); changes no number, so it is never hashed

    def __post_init__(self):
        require(self, positive=("resolution", "latent_channels", "latent_size", "checkpoint_every"),
                non_negative=("seed",), choices={"dataset": DATASETS, "features": FEATURE_SOURCES,
                                                 "feature_size": FEATURE_SIZES, "start": STARTS,
                                                 "image_store": STORES})
        if self.image_store == "memmap" and self.dataset not in FILE_BACKED:
            raise SettingError("image_store", f"must be memory with dataset {self.dataset}: the memmap store "
                               f"holds decoded image files ({', '.join(FILE_BACKED)}), and "
                               f"{memmap_refusal(self.dataset)}", self.image_store)
        if self.data_workers is not None and self.data_workers < 0:
            raise SettingError("data_workers", "must be 0 or more (or none: one per core)", self.data_workers)
        if self.limit is not None and self.limit < 1:
            raise SettingError("limit", "must be a positive image count per split (or none: all)", self.limit)
        down = self.resolution // self.latent_size
        if self.resolution % self.latent_size or down & (down - 1):
            raise SettingError("latent_size", f"must divide resolution = {self.resolution} by a power of two "
                               f"(the tokenizer downsamples by 2 per level)", self.latent_size)
        if not self.priors:
            raise SettingError("priors", "must name at least one prior (run_all.py priors lists them)", self.priors)
        for name in self.priors:
            get_prior(name)  # an unknown name answers with the registered list
        if not self.training_seeds or len(set(self.training_seeds)) != len(self.training_seeds) \
                or min(self.training_seeds) < 0:
            raise ValueError(f"training_seeds must be distinct non-negative integers, got {self.training_seeds}")

    def for_training_seed(self, s: int) -> "StudyConfig":
        """The config of training seed s: every training stage's seed shifted by s (data and nets shared)."""
        return replace(self, training_seeds=(s,), **{k: replace(getattr(self, k), seed=getattr(self, k).seed + s)
                                                      for k in ("teacher", "pretrain", "dmvae", "generator")})


def _stages(name: str, pretrain: str | None = None) -> dict:
    return dict(teacher=TEACHER_PRESETS[name], pretrain=PRETRAIN_PRESETS[pretrain or name],
                dmvae=DMVAE_PRESETS[name], generator=GENERATOR_PRESETS[name])


# bf16 autocast, TF32 and fused AdamW, as peers train on accelerators (compile stays opt-in: --set compute.compile=true)
GPU_COMPUTE = ComputeConfig(precision="bf16", tf32=True, fused_adamw=True)

STUDY_PRESETS = {
    "smoke": dict(limit=200, feature_size="smoke", checkpoint_every=10, **_stages("smoke"),
                  eval=EvalConfig(ref_n=32, gfid_n=32, convergence_n=32, sample_steps=10, structure_n=200,
                                  tsne_per_class=10, match_n=64)),
    "cpu": dict(**_stages("cpu"), eval=EvalConfig()),
    "gpu": dict(feature_size="gpu", checkpoint_every=1000, **_stages("gpu"), compute=GPU_COMPUTE,
                eval=EvalConfig(ref_n=10_000, gfid_n=5000, seeds=(0, 1, 2), convergence_n=5000, sample_steps=50,
                                structure_n=5000, match_n=5000, batch=250)),
    "paper": dict(dataset="imagefolder", image_store="memmap", resolution=256, latent_channels=32, latent_size=16,
                  features="pretrained", feature_size="gpu", checkpoint_every=5000, **_stages("paper", pretrain="gpu"), compute=GPU_COMPUTE,
                  eval=EvalConfig(ref_n=50_000, gfid_n=5000, convergence_n=5000, sample_steps=50, structure_n=5000,
                                  batch=250)),
}

