"""Priors from an autoencoder's latents (Table 1 rows VAE-baseline and Difftraj).

Both rows use the KL-VAE of bench/features/kl_vae.py, trained here on the train split and cached by
content. The noise row can instead use the paper's LDM autoencoder (SD-VAE, bench/features/ldm.py,
through the optional package diffusers): with --features pretrained it must, with auto it does when its
files are found and its latents fit the study's grid (else the KL-VAE, with a "fallback" line in the
provenance), with local it never does. No registry ships the SD-VAE (docs/assets.md).
- vae:   its latents (posterior means) over the train set: the baseline without distribution
         matching, whose aggregate posterior is whatever the KL-VAE learned.
- noise: the same latents, normalised to zero mean and unit variance (scalar mean and std over
         the train set, as the suite normalises every latent space), then noised to t = 0.5 with
         the suite's path z_t = t z + (1 - t) eps (bench/core/flow.py). Fresh eps per draw, so
         p_r is continuous; its variance is t^2 + (1 - t)^2 = 0.5 at t = 0.5.
The latent grid is the VAE's: down = resolution / latent_size, channels = latent_channels.
"""
from __future__ import annotations

import dataclasses

import torch

from bench.cache import Cache, content_key
from bench.core.flow import interpolate
from bench.data import dataset_fingerprint
from bench.errors import UserError, unknown
from bench.features import ldm as L
from bench.features.kl_vae import KLVAE, KLVAE_PRESETS, train_kl_vae
from bench.image_store import mean_image
from priors.base import Prior, PriorInfo, check
from priors.registry import register_prior

VAE_VERSION = "2"  # bump when the KL-VAE or its latents change (2: bench/core/conv.py modules, new weight names)
LDM_LATENTS_VERSION = "1"  # bump when the LDM latents of the train set change (cached under kind "prior")


class KLVAEPrior(Prior):
    """Shared: train (or load) the KL-VAE and encode the train split."""

    has_image_encoder = True  # the KL-VAE's encoder is the stage-1 reference encoder
    uses_ldm = False  # may the pretrained LDM autoencoder stand in for the KL-VAE (settings.features)?

    def __init__(self, settings, data=None):
        super().__init__(settings, data)
        if data is None:
            raise UserError(f"The '{self.info.name}' prior needs a dataset: its latents are a "
                            f"VAE's encodings of images.")
        r, s = data.train.images.shape[-1], settings.latent_size
        if r % s or (r // s) & (r // s - 1):
            raise UserError(f"The '{self.info.name}' prior needs the image side ({r}) to be a "
                            f"power-of-two multiple of latent_size ({s}); change --resolution or "
                            f"the latent size.")
        size = settings.feature_size if settings.feature_size in KLVAE_PRESETS else "cpu"
        if settings.feature_size not in KLVAE_PRESETS and settings.feature_size != "gpu":
            raise unknown("KL-VAE size", settings.feature_size, KLVAE_PRESETS)
        self.vae_cfg = dataclasses.replace(KLVAE_PRESETS[size], down=r // s,
                                           latent_ch=settings.latent_channels, seed=settings.seed)
        self.cache_hit = False

    def _ldm_folder(self):
        """(the LDM autoencoder's folder to use or None, the auto fallback line or None)."""
        s = self.settings
        if not self.uses_ldm or s.features == "local":
            return None, None
        folder = L.resolve_ldm(None, s.weights_dir)
        if folder is None:
            if s.features == "pretrained":
                raise L.missing_ldm(None, s.weights_dir)
            where = f"--weights-dir {s.weights_dir}" if s.weights_dir else "no --weights-dir"
            return None, (f"LDM autoencoder ({L.DEFAULT_LDM}) not found ({where}, nor the Hugging Face cache); "
                          f"used the suite's KL-VAE")
        r = self.data.train.images.shape[-1]
        if L.fit_grid(folder, r, s.latent_channels, s.latent_size) is None and s.features == "auto":
            return None, f"{L.grid_mismatch(folder, r, s.latent_channels, s.latent_size)}; used the suite's KL-VAE"
        return folder, None  # load_ldm refuses a grid that does not fit, naming the ones that would

    def _build_ldm(self, cache: Cache, fp: str) -> None:
        """The train set's latents under the LDM autoencoder (cached by weights, data and grid)."""
        s, device = self.settings, ("cuda" if torch.cuda.is_available() else "cpu")
        self.vae = L.load_ldm(None, s.weights_dir, self.data.train.images.shape[-1], s.latent_channels,
                              s.latent_size, device)
        net = self.vae.provenance
        key = content_key("prior", self.info.name, "ldm-latents", LDM_LATENTS_VERSION, net["sha256"],
                          net["config_sha256"], net["pixel_unshuffle"], fp)
        hit = cache.load("prior", key)
        self.cache_hit = hit is not None
        if hit is not None:
            self.z_train = hit[0]["z"].clone()
        else:
            self.z_train = self.encode_images(self.data.train.images)
            cache.save("prior", key, {"z": self.z_train}, {"prior": self.info.name, "network": net["name"]})
        self.y_train = self.data.train.labels
        self.mean, self.std = self.z_train.mean().item(), self.z_train.std().item()
        self._provenance = {"feature_source": "pretrained", "network": net,
                            "cache": {"kind": "prior", "key": key},
                            "latent_mean": self.mean, "latent_std": self.std}

    def _build(self, cache: Cache) -> None:
        fp = dataset_fingerprint(self.data)
        folder, fallback = self._ldm_folder()
        if folder is not None:
            return self._build_ldm(cache, fp)
        cfg = dataclasses.asdict(self.vae_cfg)
        net_key = content_key("featnet", "kl_vae", VAE_VERSION, cfg, fp)
        hit = cache.load("featnet", net_key)
        if hit is not None:
            self.vae = KLVAE(self.data.channels, self.vae_cfg.down, self.vae_cfg.latent_ch,
                             self.vae_cfg.width)
            self.vae.load_state_dict(hit[0])
            self.cache_hit = True
        else:
            self.vae = train_kl_vae(self.data.train.images, self.vae_cfg)
            cache.save("featnet", net_key, self.vae.state_dict(),
                       {"network": "KL-VAE (bench/features/kl_vae.py)", "config": cfg})
        self.vae.eval().requires_grad_(False)
        self.z_train = self.encode_images(self.data.train.images)       # (N, C, h, w)
        self.y_train = self.data.train.labels
        self.mean, self.std = self.z_train.mean().item(), self.z_train.std().item()
        self._provenance = {
            "feature_source": "local",
            "network": {"name": "suite KL-VAE (stands in for the paper's LDM autoencoder, which "
                                "no registry ships)", "config": cfg,
                        "cache": {"kind": "featnet", "key": net_key}, "version": VAE_VERSION},
            **({"fallback": fallback} if fallback else {}),
            "latent_mean": self.mean, "latent_std": self.std}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Posterior means of the VAE, (N, C, h, w)."""
        return torch.cat([self.vae.encode(x)[0] for x in images.split(batch)])

    def _draw(self, n, generator):
        idx = torch.randint(len(self.z_train), (n,), generator=generator)
        return self.z_train[idx], self.y_train[idx]

    @torch.no_grad()
    def _psnr_test(self) -> tuple[float, float]:
        """PSNR of the VAE on test images, and of the mean train image as a floor to beat."""
        x = self.data.test.images[:1000]
        rec = self.vae.decode(self.encode_images(x)).clamp(-1, 1)
        mean_img = mean_image(self.data.train.images).expand_as(x)
        return _psnr(rec, x), _psnr(mean_img, x)


@register_prior
class VAE(KLVAEPrior):
    """The baseline row: a KL-VAE's latents, no distribution matching."""

    info = PriorInfo(name="vae", description="KL-regularised VAE latents (the baseline without "
                     "distribution matching)", paper_row="VAE-baseline", version="1",
                     class_conditional=True, feature_kind="vae")

    def sample(self, n, generator=None):
        return self._draw(n, generator)

    def reference_latents(self, images):
        return self.encode_images(images)

    def checks(self, generator):
        psnr, floor = self._psnr_test()
        return super().checks(generator) + [
            check("KL-VAE reconstruction PSNR on test (dB)", psnr,
                  f"> {floor + 3:.1f} (mean-image PSNR + 3 dB)", psnr > floor + 3)]


@register_prior
class Noise(KLVAEPrior):
    """Table 1's Difftraj row: autoencoder latents (the KL-VAE's, or the SD-VAE's) noised to t = 0.5."""

    uses_ldm = True

    info = PriorInfo(name="noise", description="KL-VAE latents, normalised, noised to t = 0.5 "
                     "(a point on the diffusion trajectory)", paper_row="Difftraj", version="1",
                     class_conditional=True, feature_kind="vae")

    def _build(self, cache):
        super()._build(cache)
        self._provenance.update(noise_t=self.settings.noise_t,
                                path="z_t = t * (z - mean) / std + (1 - t) * eps",
                                reference_encoder="t * (z - mean) / std: the noise-free part (the encoder start "
                                                  "distils it; the DM term has to add the noise's spread)")

    def reference_latents(self, images):
        """The noise-free part t * (z - mean) / std of the KL-VAE latents: a deterministic encoder can only
        reproduce that per image; the spread of the noise is left to the DM term (recorded in provenance)."""
        return self.settings.noise_t * (self.encode_images(images) - self.mean) / self.std

    def sample(self, n, generator=None):
        z, y = self._draw(n, generator)
        z = (z - self.mean) / self.std
        eps = torch.randn(z.shape, generator=generator)
        return interpolate(z, eps, torch.full((n,), self.settings.noise_t)), y

    def checks(self, generator):
        t = self.settings.noise_t
        z, _ = self.sample(8192, generator)
        want = t**2 + (1 - t) ** 2
        return super().checks(generator) + [
            check(f"variance of the noised latents (t = {t})", z.var().item(),
                  f"{want:.3f} +- 0.02 (t^2 + (1-t)^2)", abs(z.var().item() - want) < 0.02)]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1], on the [0, 1] scale."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()
