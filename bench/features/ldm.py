"""The paper's LDM autoencoder for the noise prior: SD-VAE (stabilityai/sd-vae-ft-ema) through diffusers.

diffusers is an optional extra (pip install diffusers, or 'dmvae-bench[ldm]'); nothing else imports it.
`resolve_ldm` looks, in order, for the folder holding config.json and diffusion_pytorch_model.safetensors:
  <weights_dir>/sd-vae-ft-ema/       (huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir ...)
  the Hugging Face cache ($HF_HUB_CACHE or $HF_HOME/hub), repo stabilityai/sd-vae-ft-ema, one snapshot
Only safetensors weights are read (nothing is unpickled), and nothing is downloaded.
Latents are posterior means (B, latent_channels, R/down, R/down) of images in [-1, 1] (grey is expanded to
RGB); the config's scaling_factor is recorded, not applied: the noise prior normalises by its own mean and std.
`fit_grid` says how that native grid maps onto the study's (C, h, w): unchanged, or a pixel_unshuffle by f
(C = 4 f^2, h = R / (8 f)), a lossless rearrangement; any other grid is refused.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.cache import sha256_file
from bench.errors import UserError, unknown
from bench.features.pretrained import _hf_cache_dir

FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclasses.dataclass(frozen=True)
class LDMSpec:
    name: str        # the folder name in --weights-dir
    hf_hub_id: str
    note: str


LDM = {"sd-vae-ft-ema": LDMSpec("sd-vae-ft-ema", "stabilityai/sd-vae-ft-ema",
                                "SD-VAE with the EMA fine-tuned decoder (the LDM autoencoder of DiT), 4 x R/8 x R/8")}
DEFAULT_LDM = "sd-vae-ft-ema"


def get_ldm_spec(variant: str | None = None) -> LDMSpec:
    variant = variant or DEFAULT_LDM
    if variant not in LDM:
        raise unknown("LDM autoencoder", variant, LDM)
    return LDM[variant]


def resolve_ldm(variant: str | None = None, weights_dir: str | Path | None = None) -> Path | None:
    """The folder with config.json and the safetensors weights, from weights_dir or the HF cache; None if absent."""
    spec = get_ldm_spec(variant)
    if weights_dir is not None:
        folder = Path(weights_dir).expanduser() / spec.name
        if all((folder / f).is_file() for f in FILES):
            return folder
    from huggingface_hub import try_to_load_from_cache  # reads refs/ and snapshots/, never the network
    hits = [try_to_load_from_cache(spec.hf_hub_id, f, cache_dir=_hf_cache_dir()) for f in FILES]
    if all(isinstance(h, str) for h in hits) and len({Path(h).parent for h in hits}) == 1:
        return Path(hits[0]).parent
    return None


def _where(spec: LDMSpec, weights_dir) -> str:
    local = (f"{Path(weights_dir).expanduser() / spec.name}/{{{','.join(FILES)}}}" if weights_dir is not None
             else "(no --weights-dir given)")
    repo = _hf_cache_dir() / ("models--" + spec.hf_hub_id.replace("/", "--"))
    return f"{local}; {repo}/snapshots/*/{{{','.join(FILES)}}}"


def missing_ldm(variant: str | None, weights_dir) -> UserError:
    spec = get_ldm_spec(variant)
    return UserError(
        f"No weights found for the noise prior's LDM autoencoder ({spec.name}, Hugging Face hub id "
        f"'{spec.hf_hub_id}'). Looked for: {_where(spec, weights_dir)}. To supply them, put config.json and "
        f"diffusion_pytorch_model.safetensors of the hub repo in <weights-dir>/{spec.name}/ (huggingface-cli "
        f"download {spec.hf_hub_id} config.json diffusion_pytorch_model.safetensors --local-dir "
        f"<weights-dir>/{spec.name}), and install the optional package diffusers (pip install diffusers); or "
        f"use --features local (or auto), which trains the suite's KL-VAE instead and needs no download.")


def native_grid(folder: Path) -> tuple[int, int]:
    """(latent channels, downsampling factor) of the autoencoder in folder, read from its config.json."""
    cfg = json.loads((folder / "config.json").read_text())
    return int(cfg.get("latent_channels", 4)), 2 ** (len(cfg.get("block_out_channels", (0,) * 4)) - 1)


def fit_grid(folder: Path, resolution: int, channels: int, size: int) -> int | None:
    """The pixel_unshuffle factor f that turns the native latents of R-px images into (channels, size, size)."""
    c0, down = native_grid(folder)
    if resolution % down:
        return None
    n = resolution // down
    f = n // size
    ok = n % size == 0 and f & (f - 1) == 0 and channels == c0 * f * f
    return f if ok else None


def grid_mismatch(folder: Path, resolution: int, channels: int, size: int) -> str:
    """Why the study's grid does not fit, and the grids that would (one sentence)."""
    c0, down = native_grid(folder)
    fits, n, f = [], resolution // down, 1
    while resolution % down == 0 and n % f == 0 and n // f >= 1 and len(fits) < 4:
        fits.append(f"{c0 * f * f}x{n // f}x{n // f}")
        f *= 2
    return (f"the autoencoder in {folder} gives {c0}-channel latents at 1/{down} of the image side, which "
            f"cannot be rearranged into the study's {channels}x{size}x{size} grid at {resolution} px (grids "
            f"that fit: {', '.join(fits) or 'none, the resolution is not a multiple of ' + str(down)})")


class LDMGrid(nn.Module):
    """An AutoencoderKL on the study's grid: encode -> (posterior mean, pixel-unshuffled by f, None)."""

    def __init__(self, vae: nn.Module, factor: int, batch: int = 8):
        super().__init__()
        self.vae, self.factor, self.batch = vae.eval().requires_grad_(False), factor, batch

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        device = next(self.vae.parameters()).device
        out = []
        for xb in x.split(self.batch):
            if xb.shape[1] == 1:
                xb = xb.expand(-1, 3, -1, -1)  # grey -> RGB: the SD-VAE was trained on colour images
            z = self.vae.encode(xb.to(device).float()).latent_dist.mean
            out.append(F.pixel_unshuffle(z, self.factor).cpu() if self.factor > 1 else z.cpu())
        return torch.cat(out), None

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        z = F.pixel_shuffle(z, self.factor) if self.factor > 1 else z
        return torch.cat([self.vae.decode(zb.to(device)).sample.cpu() for zb in z.split(self.batch)])


def load_ldm(variant: str | None, weights_dir, resolution: int, channels: int, size: int,
             device: str | torch.device = "cpu") -> LDMGrid:
    """The frozen autoencoder on the study's grid, with a .provenance dict; UserError when it cannot be had."""
    spec = get_ldm_spec(variant)
    folder = resolve_ldm(variant, weights_dir)
    if folder is None:
        raise missing_ldm(variant, weights_dir)
    factor = fit_grid(folder, resolution, channels, size)
    if factor is None:
        why = grid_mismatch(folder, resolution, channels, size)
        raise UserError(f"The noise prior cannot use its LDM autoencoder: {why}. Set latent_channels and "
                        f"latent_size to one of those grids, or use --features local.")
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise UserError(f"The noise prior's LDM autoencoder was found in {folder}, but it loads through the "
                        f"optional package diffusers, which is not installed ({e}): pip install diffusers (or pip "
                        f"install 'dmvae-bench[ldm]'), or use --features local, which trains the suite's KL-VAE "
                        f"instead.") from e
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"The files in {folder} do not load as a diffusers AutoencoderKL "
                        f"({' '.join(str(e).split())}): give config.json and diffusion_pytorch_model.safetensors "
                        f"of '{spec.hf_hub_id}'.") from e
    model = LDMGrid(vae.to(device), factor)
    weights = folder / FILES[1]
    model.provenance = dict(name=spec.name, hf_hub_id=spec.hf_hub_id, note=spec.note, folder=str(folder),
                            weights_file=str(weights), sha256=sha256_file(weights),
                            config_sha256=sha256_file(folder / FILES[0]),
                            diffusers_version=importlib.metadata.version("diffusers"),
                            scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)),
                            native_grid=list(native_grid(folder)), pixel_unshuffle=factor)
    return model
