"""The paper's networks at their real architectures, loaded offline through the real loaders.

No hub is reachable here, so each test saves a randomly initialised network of the same timm / open_clip
architecture in a layout a user would have (a --weights-dir file, a huggingface-cli --local-dir copy, the
Hugging Face cache), loads it with features="pretrained", and builds the prior at 256 px on a tiny
ImageFolder: the token grid is reduced to 16 x 16, and the provenance names the file, its sha256 and the net.
Random weights prove loading, shapes and bookkeeping, not feature quality.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.cache import Cache, sha256_file
from bench.data import DataSpec, load_dataset
from bench.errors import UserError
from bench.features import pretrained as P
from bench.study.config import StudyConfig
from bench.study.pipeline import _prior_key
from priors.base import PriorSettings
from priors.registry import get_prior

GRID = dict(latent_channels=4, latent_size=16, features="pretrained", feature_size="smoke")


@pytest.fixture(autouse=True)
def no_hub(tmp_path, monkeypatch):
    """Empty HF / torch hub caches and no network: only what a test saves can be found."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folder256(tmp_path_factory):
    """A tiny ImageNet-layout folder at 256 px: 4 train images (2 classes), with file names."""
    from PIL import Image
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (270, 300, 3), dtype=np.uint8)).save(root / "train" / c / f"{c}_{i}.png")
    return load_dataset(DataSpec("imagefolder", 256, root=str(root), limit=4))


def random_timm(name, **arch):
    import timm
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **arch)  # the hub file's architecture (DINOv2: 518 px)


def hf_cache_file(tmp_path, repo_id, filename):
    """Where a file of a hub repo lies in the Hugging Face cache (refs/main -> snapshots/<rev>/)."""
    repo = tmp_path / "hf" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    return repo / "snapshots" / "0123abcd" / filename


def check_prior(p, path, spec, feature_dim, n):
    assert p.z_train.shape == (n, 4, 16, 16) and torch.isfinite(p.z_train).all()
    prov = p.provenance()
    net = prov["network"]
    assert prov["feature_source"] == "pretrained" and "fallback" not in prov
    assert net["name"] == spec.name and net["weights_file"] == str(path) and net["sha256"] == sha256_file(path)
    assert prov["reduction"]["arch"]["feature_dim"] == feature_dim and prov["reduction"]["arch"]["latent_size"] == 16
    return prov


# ------------------------------------------------------------------ settings

def test_net_choice_is_a_setting_and_leaves_default_stage_keys_alone():
    assert StudyConfig().prior.dino_net is None
    key = _prior_key(PriorSettings())
    assert not any(k.endswith("_net") for k in key)  # stage keys of existing runs unchanged
    assert _prior_key(PriorSettings(dino_net="vitl14"))["dino_net"] == "vitl14"
    with pytest.raises(ValueError, match="dino_net"):
        PriorSettings(dino_net="vitl16")
    with pytest.raises(ValueError, match="resnet_net"):
        PriorSettings(resnet_net="resnet18")


def test_missing_variant_names_its_file(folder256, tmp_path):
    with pytest.raises(UserError, match="vit_large_patch14_reg4_dinov2.lvd142m.safetensors") as e:
        get_prior("dino")(PriorSettings(**GRID, weights_dir=str(tmp_path), dino_net="vitl14-reg"), folder256).build(
            Cache(tmp_path / "cache"))
    assert "\n" not in str(e.value) and "dinov2_vitl14_reg4_pretrain.pth" in str(e.value)


# ------------------------------------------------------------------ DINOv2

@pytest.mark.slow
def test_dino_vits14_prior_at_256px_from_weights_dir(folder256, tmp_path):
    spec = P.get_spec("dino", "vits14")
    path = tmp_path / "weights" / f"{spec.name}.safetensors"
    path.parent.mkdir()
    save_file(random_timm(spec.name).state_dict(), str(path))
    p = get_prior("dino")(PriorSettings(**GRID, weights_dir=str(path.parent)), folder256).build(Cache(tmp_path / "c"))
    check_prior(p, path, spec, 384, len(folder256.train))
    assert p.provenance()["network"]["variant"] == "vits14"
    tokens = P.load_pretrained("dino", "vits14", path.parent)(folder256.train.images[:2])
    assert tokens.shape == (2, 256, 384)  # 256 px -> 224 px -> 16 x 16 patches: the grid, no pooling needed
    assert p._features(folder256.train.images[:2]).shape == (2, 384, 16, 16)


@pytest.mark.slow
def test_dino_vits14_registers_from_hf_cache(folder256, tmp_path):
    spec = P.get_spec("dino", "vits14-reg")
    net = random_timm(spec.name)
    assert net.num_prefix_tokens == 5  # class token + 4 registers
    path = hf_cache_file(tmp_path, spec.hf_hub_id, "model.safetensors")
    save_file(net.state_dict(), str(path))
    model = P.load_pretrained("dino", "vits14-reg")
    x = folder256.train.images[:2]
    tokens = model(x)
    assert tokens.shape == (2, 256, 384) and model.provenance["file"] == str(path)
    with torch.no_grad():  # the loaded net is the saved one, registers and class token dropped
        resampled = random_timm(spec.name, img_size=224)
        resampled.load_state_dict(model.net.state_dict())
        torch.testing.assert_close(tokens, resampled.eval().forward_features(model.preprocess(x))[:, 5:])
    p = get_prior("dino")(PriorSettings(**GRID, dino_net="vits14-reg"), folder256)
    source, network, _ = p._resolve_source()
    assert source == "pretrained" and network["name"] == spec.name and network["sha256"] == sha256_file(path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vitl14", "vitl14-reg"])
def test_dino_vitl14_real_architecture_loads(variant, folder256, tmp_path):
    spec = P.get_spec("dino", variant)
    path = tmp_path / f"{spec.name}.safetensors"
    save_file(random_timm(spec.name).state_dict(), str(path))  # 304M params, 518-px pos_embed as on the hub
    model = P.load_pretrained("dino", variant, tmp_path)
    assert model.net.pos_embed.shape[1] == 16 * 16 + (0 if model.net.no_embed_class else 1)
    assert model.provenance["sha256"] == sha256_file(path) and model.provenance["name"] == spec.name
    assert model(folder256.train.images[:1]).shape == (1, 256, 1024)


# ------------------------------------------------------------------ ResNet

@pytest.mark.slow
@pytest.mark.parametrize("variant, dim", [("resnet34", 512), ("resnet50", 2048)])
def test_resnet_prior_at_256px_from_local_dir_copy(variant, dim, folder256, tmp_path):
    spec = P.get_spec("resnet", variant)
    path = tmp_path / "weights" / spec.name / "model.safetensors"  # huggingface-cli download --local-dir layout
    path.parent.mkdir(parents=True)
    save_file(random_timm(spec.name).state_dict(), str(path))
    settings = PriorSettings(**GRID, weights_dir=str(tmp_path / "weights"), resnet_net=variant)
    p = get_prior("resnet")(settings, folder256).build(Cache(tmp_path / "c"))
    check_prior(p, path, spec, dim, len(folder256.train))
    assert P.load_pretrained("resnet", variant, tmp_path / "weights")(folder256.train.images[:1]).shape == (1, dim, 7, 7)


# ------------------------------------------------------------------ SigLIP text

@pytest.mark.slow
def test_siglip_b16_text_prior_with_keyed_captions(folder256, tmp_path):
    from test_pretrained import save_word_tokenizer
    spec = P.get_spec("text", "siglip-b16")
    torch.manual_seed(0)
    tower = P.build_pretrained_arch(spec)  # the full 12-layer, 768-wide text tower, 32000 tokens
    folder = tmp_path / "weights" / spec.name
    folder.mkdir(parents=True)
    path = folder / "open_clip_model.safetensors"
    save_file({"text." + k: v.contiguous() for k, v in tower.state_dict().items()}, str(path))
    save_word_tokenizer(folder, "a photo of the first second class".split())  # SigLIP's own files: not offline
    train = folder256.train
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({f: f"a photo of the {'first' if f.startswith('n01') else 'second'} class"
                                for f in train.files}))
    settings = PriorSettings(**{**GRID, "features": "pretrained"}, weights_dir=str(tmp_path / "weights"),
                             captions_file=str(caps))
    p = get_prior("text")(settings, folder256).build(Cache(tmp_path / "c"))
    prov = check_prior(p, path, spec, 768, len(train))
    assert prov["captions"]["format"] == "json" and prov["captions"]["distinct"] == 2
    assert torch.equal(p.z_train[train.labels == 0][0], p.z_train[train.labels == 0][-1])  # same caption, same z


def test_paper_table_covers_the_brief():
    assert {"vits14", "vitl14", "vits14-reg", "vitl14-reg"} <= set(P.PRETRAINED["dino"])
    assert {"resnet34", "resnet50"} <= set(P.PRETRAINED["resnet"]) and "siglip-b16" in P.PRETRAINED["text"]
    assert dataclasses.asdict(P.get_spec("dino", "vitl14-reg"))["url_file"] == "dinov2_vitl14_reg4_pretrain.pth"
