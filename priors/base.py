"""The interface every reference prior implements, and the settings the runner hands it.

A prior serves latents of one shape (C, h, w) on the study's latent grid. Its life cycle:

    prior = PriorClass(settings, data)     # cheap: nothing is trained or read yet
    prior.build(cache)                     # builds (or loads from the cache) its reference latents
    z, y = prior.sample(n, generator)      # n draws (n, C, h, w) with labels (n,)
    prior.provenance()                     # what it was built from: nets, weights + sha256, settings

Labels: every prior returns labels so that S_real can be class-conditional; for priors whose
latents do not depend on the class (`info.class_conditional == False`) the labels are drawn from
the dataset's class frequencies and carry no information about z.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from bench.cache import Cache
from bench.config import require


@dataclass(frozen=True)
class PriorInfo:
    """Metadata is data: shown in every table next to the prior's numbers."""

    name: str
    description: str
    paper_row: str                 # the row of the paper's Table 1 it reproduces
    version: str                   # bump when the prior's maths changes
    class_conditional: bool        # do the latents depend on the label?
    feature_kind: str | None = None  # dino | resnet | text | vae | None (analytic)


NET_KINDS = ("dino", "resnet", "text")           # feature kinds with a choice of pretrained network
FEATURE_SOURCES = ("pretrained", "local", "auto")  # auto: pretrained when weights exist, else local
FEATURE_SIZES = ("smoke", "cpu", "gpu")            # training budgets of the locally trained feature nets


@dataclass(frozen=True)
class PriorOptions:
    """Settings of particular priors: the study config's `prior` section (--set prior.noise_t=0.3)."""

    captions_file: str | None = None   # text prior: one caption per train image (bench/features/text.py)
    subdino_classes: tuple[int, ...] | None = None  # subdino prior: None is the documented default subset
    noise_t: float = 0.5               # noise prior: t of z_t = t z + (1 - t) eps (bench/core/flow.py)
    gmm_components: int = 10           # gmm prior: mixture components
    # Which pretrained network a feature source "pretrained" (or "auto" when found) loads: a variant of
    # bench/features/pretrained.py's table (None: its DEFAULT_VARIANT, e.g. dino_net=vitl14 for the
    # paper's ViT-L/14). Left out of the prior's stage key while None (bench/study/pipeline.py).
    dino_net: str | None = None        # dino, subdino: vits14 | vitl14 | vits14-reg | vitl14-reg
    resnet_net: str | None = None      # resnet: resnet34 | resnet34-tv | resnet50 | resnet50-tv
    text_net: str | None = None        # text: siglip-b16 | siglip-so400m

    def __post_init__(self):
        require(self, positive=("gmm_components",), fraction=("noise_t",))
        from bench.features.pretrained import PRETRAINED
        require(self, choices={f"{kind}_net": (None, *PRETRAINED[kind]) for kind in NET_KINDS})

    def net(self, kind: str) -> str | None:
        """The chosen variant of a pretrained feature kind (dino, resnet, text); None: the default."""
        return getattr(self, f"{kind}_net")


@dataclass(frozen=True)
class PriorSettings(PriorOptions):
    """What a prior is built from: the study's latent grid and feature source, plus its PriorOptions.

    The runner derives it from the one resolved config (bench/study/config.py); nothing here is set
    anywhere else.
    """

    latent_channels: int = 4
    latent_size: int = 8               # h = w of the latent grid
    features: str = "auto"             # a FEATURE_SOURCES value
    weights_dir: str | None = None
    feature_size: str = "cpu"          # a FEATURE_SIZES value
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        require(self, positive=("latent_channels", "latent_size"),
                choices={"features": FEATURE_SOURCES, "feature_size": FEATURE_SIZES})

    @classmethod
    def of(cls, options: PriorOptions, **study) -> "PriorSettings":
        """The settings of a study: its `prior` section and the study-wide fields given by name."""
        return cls(**asdict(options), **study)


class Prior:
    """Base class; subclasses set `info` and implement `_build` and `sample`."""

    info: ClassVar[PriorInfo]
    # Does p_r come with an encoder of images (a stage-1 reference AE, paper section 3.3)? Then the
    # DM stage starts from it (bench/dmvae/start.py) and `reference_latents` must be implemented.
    has_image_encoder: ClassVar[bool] = False

    def __init__(self, settings: PriorSettings, data=None):
        self.settings = settings
        self.data = data                   # bench.data.Splits, or None for analytic priors
        self.built = False
        self._provenance: dict = {}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.settings
        return (s.latent_channels, s.latent_size, s.latent_size)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes if self.data is not None else 1

    def build(self, cache: Cache | None = None) -> "Prior":
        """Build the reference latents (idempotent; uses the content-addressed cache)."""
        if not self.built:
            # Under a forked global RNG: the trainers of the feature nets and reductions call
            # torch.manual_seed and draw from the global stream, a load from the cache does not, so a
            # build would otherwise leave the process's global RNG in a state that depends on the cache.
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                self._build(cache or Cache())
            self.built = True
        return self

    def _build(self, cache: Cache) -> None:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n latents (n, C, h, w) float32 and labels (n,) long."""
        raise NotImplementedError

    def reference_latents(self, images: torch.Tensor) -> torch.Tensor:
        """The stage-1 reference encoder: images (N, c, R, R) in [-1, 1] -> latents (N, C, h, w) in p_r's space."""
        raise NotImplementedError(f"prior '{self.info.name}' has no image encoder (has_image_encoder is False)")

    def provenance(self) -> dict:
        """Everything needed to know what this prior was: info, settings, sources, hashes."""
        return {"info": asdict(self.info), "latent_shape": list(self.latent_shape),
                **self._provenance}

    def checks(self, generator: torch.Generator) -> list[dict]:
        """Evidence that the prior is what it claims; subclasses add their own claims."""
        z, y = self.sample(2048, generator)
        shape_ok = tuple(z.shape[1:]) == self.latent_shape and len(y) == len(z)
        return [check("samples have the latent shape and are finite", float(shape_ok),
                      f"shape {self.latent_shape}", shape_ok and bool(torch.isfinite(z).all()))]

    def _labels(self, n: int, generator) -> torch.Tensor:
        """Labels drawn from the train split's class frequencies (uniform without data)."""
        if self.data is None:
            return torch.zeros(n, dtype=torch.long)
        counts = torch.bincount(self.data.train.labels, minlength=self.data.num_classes).double()
        return torch.multinomial(counts, n, replacement=True, generator=generator)


def check(claim: str, value: float, expected: str, passed: bool) -> dict:
    """One row of `run_all.py priors --check`: the claim, what was measured, what it should be."""
    return {"claim": claim, "value": float(value), "expected": expected, "passed": bool(passed)}
