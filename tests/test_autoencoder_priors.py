"""The vae and noise priors: shapes, the noise level t = 0.5 implies, caching of the KL-VAE."""
import pytest
import torch

from bench.cache import Cache
from bench.errors import UserError
from priors.base import PriorSettings
from priors.registry import get_prior

DATA = dict(resolution=32, limit=120)  # conftest.py's `data` fixture
SMOKE = PriorSettings(feature_size="smoke", latent_channels=4, latent_size=8)


@pytest.mark.slow
def test_noise_prior_has_the_variance_of_t_half(tmp_path, data):
    p = get_prior("noise")(SMOKE, data).build(Cache(tmp_path))
    z, y = p.sample(4096, torch.Generator().manual_seed(0))
    assert z.shape == (4096, 4, 8, 8) and y.max() < data.num_classes
    assert abs(z.var().item() - 0.5) < 0.02
    rows = {r["claim"]: r for r in p.checks(torch.Generator().manual_seed(1))}
    assert rows["variance of the noised latents (t = 0.5)"]["passed"]
    assert p.provenance()["noise_t"] == 0.5


@pytest.mark.slow
def test_vae_net_is_cached_and_shared_by_noise(tmp_path, data):
    cache = Cache(tmp_path)
    first = get_prior("vae")(SMOKE, data).build(cache)
    assert not first.cache_hit
    second = get_prior("noise")(SMOKE, data).build(cache)  # same KL-VAE: served from the cache
    assert second.cache_hit
    assert torch.equal(first.z_train, second.z_train)


def test_corrupted_cache_entry_is_rebuilt(tmp_path, data):
    cache = Cache(tmp_path)
    get_prior("vae")(SMOKE, data).build(cache)
    (entry,) = (tmp_path / "featnet").iterdir()
    blob = (entry / "tensors.safetensors").read_bytes()
    (entry / "tensors.safetensors").write_bytes(blob[:-8] + b"corrupt!")
    with pytest.warns(UserWarning, match="corrupted"):
        again = get_prior("vae")(SMOKE, data).build(cache)
    assert not again.cache_hit


def test_latent_grid_must_divide_the_image(data):
    with pytest.raises(UserError, match="power-of-two multiple"):
        get_prior("vae")(PriorSettings(feature_size="smoke", latent_size=6), data)
