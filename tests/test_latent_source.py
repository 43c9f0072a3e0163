"""The generator's training batches: latents cached once (with the mirrored images' latents when
flip is on) give the same batches, hence the same loss curve, as encoding each batch on the fly."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from bench.config import SettingError
from bench.dmvae.generator import GENERATOR_PRESETS, GeneratorConfig, train_generator
from bench.dmvae.latent_norm import LatentNorm
from bench.dmvae.latent_source import CachedLatents, EncodeOnTheFly, cache_latents, flip_coins

CFG = replace(GENERATOR_PRESETS["smoke"], steps=8, batch=16, log_every=1, flip=True)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    encoder = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 4, stride=4))  # 32 px -> 4x8x8
    images = torch.rand(48, 1, 32, 32) * 2 - 1
    labels = torch.arange(48) % 10
    norm = LatentNorm(mean=0.1, scale=2.0, measured_on="test")
    return encoder, images, labels, norm


def _curve(source, labels, cfg):
    _, _, hist = train_generator(source, labels, 10, cfg)
    return torch.tensor([r["loss"] for r in hist["losses"]]), hist


def test_cached_latents_give_the_loss_curve_of_encoding_on_the_fly(setup):
    encoder, images, labels, norm = setup
    cached, h = _curve(cache_latents(encoder, images, norm, flip=True), labels, CFG)
    fly, h2 = _curve(EncodeOnTheFly(encoder, images, norm), labels, CFG)
    assert len(cached) == CFG.steps and torch.allclose(cached, fly, rtol=1e-5, atol=1e-7)
    assert h["latents"] == {"source": "cached", "flip": True, "rows": 48} and h2["latents"]["source"] == "on-the-fly"
    other, _ = _curve(cache_latents(encoder, images, norm, flip=True), labels, replace(CFG, seed=1))
    assert not torch.allclose(cached, other, rtol=1e-3)  # another augmentation (and training) seed moves it


def test_flip_coins_pick_the_mirrored_latents(setup):
    encoder, images, _, norm = setup
    source = cache_latents(encoder, images, norm, flip=True)
    idx, coins = torch.arange(8), flip_coins(0, 5, 8)
    assert coins.any() and not coins.all() and torch.equal(coins, flip_coins(0, 5, 8))
    got = source.batch(idx, coins, lambda t, i: t[i])
    with torch.no_grad():
        want = norm.apply(torch.where(coins.view(-1, 1, 1, 1), encoder(images[:8].flip(-1)), encoder(images[:8])))
    assert torch.allclose(got, want, atol=1e-6)


def test_without_flip_the_cache_is_the_plain_latent_tensor(setup):
    _, _, labels, _ = setup
    lat = torch.randn(48, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = replace(CFG, flip=False)
    a, _ = _curve(lat, labels, cfg)
    b, _ = _curve(CachedLatents(lat), labels, cfg)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="mirrored"):
        CachedLatents(lat).batch(torch.arange(4), flip_coins(0, 0, 4), lambda t, i: t[i])


def test_latent_source_setting_is_checked():
    with pytest.raises(SettingError, match="latents"):
        GeneratorConfig(latents="disk")
