"""The pretrained-weights loaders, exercised with tiny random nets of the same families saved to disk."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench.errors import UserError
from bench.features import pretrained as P

# Same timm / open_clip names as the real entries (so the same file names), tiny architectures.
TINY = {
    "dino": dict(arch=dict(img_size=28, depth=1, embed_dim=32, num_heads=2), input_size=28),
    "resnet": dict(arch=dict(layers=(1, 1, 1, 1)), input_size=32),
    "text": dict(arch=dict(embed_dim=16, text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2,
                                                       layers=1, hf_tokenizer_name="", tokenizer_kwargs={}))),
}


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the HF and torch hub caches at empty folders, and forbid the network."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def tiny(kind, monkeypatch):
    """Register a tiny variant of the default entry as (kind, 'tiny') and return its spec."""
    spec = dataclasses.replace(P.get_spec(kind), **TINY[kind])
    monkeypatch.setitem(P.PRETRAINED[kind], "tiny", spec)
    torch.manual_seed(0)
    return spec


def reference_image_features(net, spec, x):
    """The documented preprocessing, written out independently of ImageFeatures."""
    x = ((x.repeat(1, 3, 1, 1) + 1) / 2)
    x = F.interpolate(x, size=(spec.input_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval().forward_features(x)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_table_names_exist_in_installed_libraries():
    import open_clip
    import timm
    timm_names = set(timm.list_models(pretrained=True))
    for kind, variants in P.PRETRAINED.items():
        for spec in variants.values():
            if spec.source == "timm":
                assert spec.name in timm_names
                cfg = timm.models.get_pretrained_cfg(spec.name)
                assert cfg.hf_hub_id == spec.hf_hub_id and cfg.url.endswith("/" + spec.url_file)
            else:
                assert (spec.name, spec.tag) in open_clip.list_pretrained()
                assert open_clip.get_pretrained_cfg(spec.name, spec.tag)["hf_hub"].rstrip("/") == spec.hf_hub_id
        assert P.DEFAULT_VARIANT[kind] in variants


def test_dino_round_trip_from_weights_dir(empty_caches, monkeypatch):
    spec = tiny("dino", monkeypatch)
    net = P.build_pretrained_arch(spec)
    wdir = empty_caches / "weights"
    wdir.mkdir()
    save_file(net.state_dict(), str(wdir / "vit_small_patch14_dinov2.lvd142m.safetensors"))
    model = P.load_pretrained("dino", "tiny", weights_dir=wdir)
    assert not model.training and model.provenance["file"].endswith(".safetensors")
    assert_same_weights(model.net, net)
    x = torch.rand(2, 1, 20, 20) * 2 - 1
    feats = model(x)
    assert feats.shape == (2, 4, 32)  # 28 px / 14 px patches = 2 x 2 tokens, class token dropped
    torch.testing.assert_close(feats, reference_image_features(net, spec, x)[:, 1:])


def test_resnet_round_trip_from_torch_hub_cache(empty_caches, monkeypatch):
    spec = tiny("resnet", monkeypatch)
    net = P.build_pretrained_arch(spec)
    ckpt = empty_caches / "torch" / "hub" / "checkpoints" / "resnet34_a1_0-46f8f793.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt)  # a plain tensor dict: loads with weights_only=True
    model = P.load_pretrained("resnet", "tiny")
    assert_same_weights(model.net, net)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    x[:, 1:] = x[:, :1]  # grey content in RGB: must equal the C=1 input
    feats = model(x[:, :1])
    assert feats.shape == (3, 512, 1, 1)
    torch.testing.assert_close(feats, reference_image_features(net, spec, x[:, :1]))
    torch.testing.assert_close(model(x), feats)


def test_text_round_trip_from_hf_cache(empty_caches, monkeypatch):
    spec = tiny("text", monkeypatch)
    tower = P.build_pretrained_arch(spec)
    # A whole open_clip checkpoint as the hub caches it: text keys plus others the loader must skip.
    repo = empty_caches / "hf" / "models--timm--ViT-B-16-SigLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    sd = {"text." + k: v.contiguous() for k, v in tower.state_dict().items()}
    sd.update({"logit_scale": torch.zeros(1), "visual.trunk.pos_embed": torch.zeros(1, 4, 8)})
    save_file(sd, str(repo / "snapshots" / "abc123" / "open_clip_model.safetensors"))
    model = P.load_pretrained("text", "tiny")
    assert_same_weights(model.tower, tower)
    texts = ["a photo of a coat.", "a blurry photo of a sneaker."]
    from open_clip.tokenizer import SimpleTokenizer
    with torch.no_grad():
        want = F.normalize(tower.eval()(SimpleTokenizer(context_length=16)(texts)), dim=-1)
    got = model.encode_text(texts)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, want)


def test_missing_weights_names_the_files(empty_caches):
    with pytest.raises(UserError) as e:
        P.load_pretrained("dino", weights_dir=empty_caches / "weights")
    msg = str(e.value)
    assert "vit_small_patch14_dinov2.lvd142m.safetensors" in msg and "timm/vit_small_patch14_dinov2.lvd142m" in msg
    assert "--weights-dir" in msg and "\n" not in msg
    with pytest.raises(UserError, match="open_clip_model.safetensors"):
        P.load_pretrained("text", "siglip-b16")


def test_no_download_when_offline(empty_caches):
    assert P.resolve_weights("resnet", allow_download=True) is None  # HF_HUB_OFFLINE=1: returns at once


def test_unknown_names_suggest():
    with pytest.raises(UserError, match="Did you mean 'vitl14'"):
        P.get_spec("dino", "vitl16")
    with pytest.raises(UserError, match="Valid"):
        P.get_spec("clip")


def test_wrong_file_is_a_user_error(empty_caches, monkeypatch):
    tiny("dino", monkeypatch)
    wdir = empty_caches / "weights"
    wdir.mkdir()
    save_file({"foo": torch.zeros(2)}, str(wdir / "vit_small_patch14_dinov2.lvd142m.safetensors"))
    with pytest.raises(UserError, match="does not fit"):
        P.load_pretrained("dino", "tiny", weights_dir=wdir)


def save_word_tokenizer(folder, words):
    """A tiny HF fast tokenizer (whitespace words) standing in for SigLIP's sentencepiece files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(str(folder))


def test_text_hf_tokenizer_beside_weights(empty_caches, monkeypatch):
    # The real SigLIP text config (HF tokenizer, canonicalize cleaning) with a tiny width and depth.
    spec = dataclasses.replace(P.get_spec("text"), arch=dict(
        embed_dim=16, text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)))
    monkeypatch.setitem(P.PRETRAINED["text"], "tiny", spec)
    tower = P.build_pretrained_arch(spec)
    folder = empty_caches / "weights" / "ViT-B-16-SigLIP"
    folder.mkdir(parents=True)
    save_file({"text." + k: v.contiguous() for k, v in tower.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    with pytest.raises(UserError, match="tokenizer"):
        P.load_pretrained("text", "tiny", weights_dir=empty_caches / "weights")
    save_word_tokenizer(folder, "a photo of coat sneaker".split())
    model = P.load_pretrained("text", "tiny", weights_dir=empty_caches / "weights")
    tokens = model.tokenizer(["A photo of a coat!"])
    assert tokens[0, :5].tolist() == [2, 3, 4, 2, 5]  # canonicalize: lower case, punctuation dropped
    with torch.no_grad():
        want = F.normalize(tower.eval()(tokens), dim=-1)
    torch.testing.assert_close(model.encode_text(["A photo of a coat!"]), want)


def test_dino_pos_embed_resampled_like_518_to_224(empty_caches, monkeypatch):
    # The hub's DINOv2 files hold a 37 x 37 grid (518 px); we run at 224 px. Same thing at tiny size: 3x3 -> 2x2.
    spec = tiny("dino", monkeypatch)
    wdir = empty_caches / "weights"
    wdir.mkdir()
    big = P.build_pretrained_arch(dataclasses.replace(spec, arch={**spec.arch, "img_size": 42}))
    save_file(big.state_dict(), str(wdir / "vit_small_patch14_dinov2.lvd142m.safetensors"))
    model = P.load_pretrained("dino", "tiny", weights_dir=wdir)
    assert model.net.pos_embed.shape == (1, 5, 32)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 4, 32)
