"""The noise prior's LDM autoencoder (SD-VAE through the optional package diffusers), offline.

Without diffusers (the default install) the loader's errors are tested; with it, randomly initialised
AutoencoderKLs saved in the hub's layout are loaded through the real loader and the prior is built at 256 px.
"""
import importlib.util
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from bench.cache import Cache, sha256_file
from bench.data import ImageSet, Splits
from bench.errors import UserError
from bench.features import ldm as L
from priors.base import PriorSettings
from priors.registry import get_prior

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs the optional package diffusers")
# stabilityai/sd-vae-ft-ema's config.json (the architecture of every SD 1.x / DiT VAE)
SD_VAE = dict(_class_name="AutoencoderKL", act_fn="silu", block_out_channels=[128, 256, 512, 512],
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              sample_size=256)
TINY = {**SD_VAE, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4}  # still /8


@pytest.fixture(scope="module")
def data():
    """4 train images at 256 px (random, 2 classes): the synthetic set would draw 700 images at 256 px first."""
    g = torch.Generator().manual_seed(0)
    sets = [ImageSet(torch.rand(4, 3, 256, 256, generator=g) * 2 - 1, torch.tensor([0, 1, 0, 1]), ["a", "b"])
            for _ in range(3)]
    return Splits(*sets, num_classes=2, channels=3, source="random test images")


@pytest.fixture(autouse=True)
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def settings(**kw):
    return PriorSettings(**{"latent_channels": 4, "latent_size": 32, "features": "pretrained",
                            "feature_size": "smoke", **kw})


def fake_folder(root, config=SD_VAE):
    """config.json and a (not loadable) weights file: enough for everything before diffusers is imported."""
    folder = root / "sd-vae-ft-ema"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    return folder


def save_vae(folder, config, seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    vae.save_pretrained(str(folder), safe_serialization=True)  # config.json + diffusion_pytorch_model.safetensors
    return vae.eval()


def test_missing_weights_name_the_files_and_the_package(tmp_path, data):
    with pytest.raises(UserError) as e:
        get_prior("noise")(settings(weights_dir=str(tmp_path / "w")), data).build(Cache(tmp_path / "c"))
    msg = str(e.value)
    assert "\n" not in msg and "stabilityai/sd-vae-ft-ema" in msg and "pip install diffusers" in msg
    assert f"{tmp_path / 'w' / 'sd-vae-ft-ema'}/{{config.json,diffusion_pytorch_model.safetensors}}" in msg


def test_found_weights_without_diffusers_name_the_package(tmp_path, data, monkeypatch):
    fake_folder(tmp_path / "w")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"optional package diffusers, which is not installed .*pip install diffusers") as e:
        get_prior("noise")(settings(weights_dir=str(tmp_path / "w")), data).build(Cache(tmp_path / "c"))
    assert "\n" not in str(e.value)


def test_grid_must_fit_the_autoencoder(tmp_path, data):
    folder = fake_folder(tmp_path / "w")
    assert [L.fit_grid(folder, 256, c, s) for c, s in [(4, 32), (16, 16), (64, 8), (32, 16), (4, 16)]] == \
        [1, 2, 4, None, None]
    with pytest.raises(UserError, match=r"4-channel latents at 1/8 .* 32x16x16 grid at 256 px \(grids that fit: "
                                        r"4x32x32, 16x16x16, 64x8x8, 256x4x4\)"):
        get_prior("noise")(settings(weights_dir=str(tmp_path / "w"), latent_channels=32, latent_size=16),
                           data).build(Cache(tmp_path / "c"))


def test_auto_falls_back_to_the_kl_vae_and_says_why(tmp_path, data):
    p = get_prior("noise")(settings(features="auto", weights_dir=str(tmp_path / "w")), data)
    assert p._ldm_folder() == (None, f"LDM autoencoder (sd-vae-ft-ema) not found (--weights-dir {tmp_path / 'w'}, "
                                     f"nor the Hugging Face cache); used the suite's KL-VAE")
    fake_folder(tmp_path / "w")
    folder, why = get_prior("noise")(settings(features="auto", weights_dir=str(tmp_path / "w"), latent_size=16),
                                     data)._ldm_folder()
    assert folder is None and why.endswith("(grids that fit: 4x32x32, 16x16x16, 64x8x8, 256x4x4); used the suite's KL-VAE")
    assert get_prior("noise")(settings(features="local", weights_dir=str(tmp_path / "w")), data)._ldm_folder() == (None, None)
    assert get_prior("vae")(settings(weights_dir=str(tmp_path / "w")), data)._ldm_folder() == (None, None)  # KL-VAE row


@needs_diffusers
@pytest.mark.slow
def test_noise_prior_at_256px_from_hf_cache(tmp_path, data):
    repo = tmp_path / "hf" / "models--stabilityai--sd-vae-ft-ema"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("feedbeef")
    vae = save_vae(repo / "snapshots" / "feedbeef", TINY)
    cache = Cache(tmp_path / "c")
    p = get_prior("noise")(settings(latent_channels=16, latent_size=16), data).build(cache)
    x = data.train.images
    with torch.no_grad():
        want = F.pixel_unshuffle(vae.encode(x).latent_dist.mean, 2)  # (N, 4, 32, 32) -> (N, 16, 16, 16)
    assert p.z_train.shape == (len(x), 16, 16, 16)
    torch.testing.assert_close(p.z_train, want)
    torch.testing.assert_close(p.reference_latents(x[:2]), 0.5 * (want[:2] - p.mean) / p.std)
    z, _ = p.sample(64, torch.Generator().manual_seed(0))
    assert z.shape == (64, 16, 16, 16)
    prov = p.provenance()
    weights = repo / "snapshots" / "feedbeef" / "diffusion_pytorch_model.safetensors"
    assert prov["feature_source"] == "pretrained" and prov["network"]["sha256"] == sha256_file(weights)
    assert prov["network"]["pixel_unshuffle"] == 2 and prov["network"]["native_grid"] == [4, 8]
    assert prov["noise_t"] == 0.5 and not p.cache_hit
    again = get_prior("noise")(settings(latent_channels=16, latent_size=16), data).build(cache)
    assert again.cache_hit and torch.equal(again.z_train, p.z_train)


@needs_diffusers
@pytest.mark.slow
def test_sd_vae_real_architecture_loads_from_weights_dir(tmp_path, data):
    vae = save_vae(tmp_path / "w" / "sd-vae-ft-ema", SD_VAE)  # 84M params, the hub file's layout
    model = L.load_ldm(None, tmp_path / "w", 256, 4, 32)
    x = data.train.images[:1]
    z, _ = model.encode(x)
    with torch.no_grad():
        torch.testing.assert_close(z, vae.encode(x).latent_dist.mean)
    assert z.shape == (1, 4, 32, 32) and model.provenance["scaling_factor"] == 0.18215
    assert model.provenance["weights_file"] == str(tmp_path / "w" / "sd-vae-ft-ema" / "diffusion_pytorch_model.safetensors")
