"""The paper's feature networks (DINOv2 ViT-S/L with or without registers, ResNet-34/50, SigLIP text), from files.

Nothing here downloads unless asked (`allow_download=True`, and never with HF_HUB_OFFLINE=1).
`resolve_weights` looks, in order, for:

  timm nets (dino, resnet), e.g. name = vit_small_patch14_dinov2.lvd142m
    <weights_dir>/<name>.safetensors
    <weights_dir>/<name>/model.safetensors       (huggingface-cli download <hf_hub_id> --local-dir ...)
    <weights_dir>/<url_file>                     (the original release file, e.g. dinov2_vits14_pretrain.pth)
    the Hugging Face cache: $HF_HUB_CACHE or $HF_HOME/hub, repo <hf_hub_id>, model.safetensors / pytorch_model.bin
    the torch hub cache: $TORCH_HOME/hub/checkpoints/<url_file>
  open_clip text towers (text), e.g. name = ViT-B-16-SigLIP
    <weights_dir>/<name>/open_clip_model.safetensors (or open_clip_pytorch_model.bin), with the tokenizer
      files (tokenizer.json, tokenizer_config.json, ...) beside it: a copy of the hub repo <hf_hub_id>
    the Hugging Face cache, repo <hf_hub_id>, open_clip_model.safetensors / open_clip_pytorch_model.bin

Files load with safetensors, or torch.load(weights_only=True) for .pth/.bin: nothing is unpickled.
Every loaded net takes images (B, C, R, R) in [-1, 1], C = 1 or 3, and returns features:
dino -> patch tokens (B, N, D); resnet -> last-stage map (B, D, h, w); text -> encode_text(list[str]) -> (B, D).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.cache import sha256_file
from bench.errors import UserError, unknown

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One pretrained network: where its weights live and how its inputs are prepared."""
    source: str                 # "timm" or "open_clip"
    name: str                   # timm model name with its tag, or open_clip model name
    hf_hub_id: str              # the repo timm / open_clip download from when online
    tag: str = ""               # open_clip pretrained tag
    url_file: str = ""          # file name of the original release URL (torch hub cache)
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    arch: dict = dataclasses.field(default_factory=dict)  # architecture overrides (tests: tiny nets)
    note: str = ""


# One line per weights source; names checked against the installed timm / open_clip in the tests.
# DINOv2 runs at 224 px: 16 x 16 patches of 14 px, the latent grid of the paper (timm resamples pos_embed);
# 256-px images are resized to it (ImageFeatures.preprocess). Which variant a prior uses: prior.dino_net etc.
PRETRAINED = {
    "dino": {
        "vits14": Pretrained("timm", "vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
                             url_file="dinov2_vits14_pretrain.pth", arch=dict(img_size=224),
                             note="DINOv2 ViT-S/14, 22M params: the default, affordable on CPU"),
        "vitl14": Pretrained("timm", "vit_large_patch14_dinov2.lvd142m", "timm/vit_large_patch14_dinov2.lvd142m",
                             url_file="dinov2_vitl14_pretrain.pth", arch=dict(img_size=224),
                             note="DINOv2 ViT-L/14, 304M params: the paper's DINO row"),
        # With registers (Darcet et al. 2024): 4 extra prefix tokens, dropped with the class token.
        "vits14-reg": Pretrained("timm", "vit_small_patch14_reg4_dinov2.lvd142m",
                                 "timm/vit_small_patch14_reg4_dinov2.lvd142m",
                                 url_file="dinov2_vits14_reg4_pretrain.pth", arch=dict(img_size=224),
                                 note="DINOv2 ViT-S/14 with 4 registers, 22M params"),
        "vitl14-reg": Pretrained("timm", "vit_large_patch14_reg4_dinov2.lvd142m",
                                 "timm/vit_large_patch14_reg4_dinov2.lvd142m",
                                 url_file="dinov2_vitl14_reg4_pretrain.pth", arch=dict(img_size=224),
                                 note="DINOv2 ViT-L/14 with 4 registers, 304M params"),
    },
    "resnet": {
        "resnet34": Pretrained("timm", "resnet34.a1_in1k", "timm/resnet34.a1_in1k",
                               url_file="resnet34_a1_0-46f8f793.pth",
                               note="ResNet-34, timm's A1 recipe on ImageNet-1k: the paper's ResNet row"),
        "resnet34-tv": Pretrained("timm", "resnet34.tv_in1k", "timm/resnet34.tv_in1k",
                                  url_file="resnet34-b627a593.pth", note="ResNet-34, torchvision's original weights"),
        "resnet50": Pretrained("timm", "resnet50.a1_in1k", "timm/resnet50.a1_in1k",
                               url_file="resnet50_a1_0-14fe96d1.pth",
                               note="ResNet-50, timm's A1 recipe on ImageNet-1k, 2048-d last map"),
        "resnet50-tv": Pretrained("timm", "resnet50.tv_in1k", "timm/resnet50.tv_in1k",
                                  url_file="resnet50-0676ba61.pth", note="ResNet-50, torchvision's original weights"),
    },
    "text": {
        "siglip-b16": Pretrained("open_clip", "ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP", tag="webli",
                                 mean=SIGLIP_MEAN, std=SIGLIP_STD, note="SigLIP B/16 text tower, 768-d"),
        "siglip-so400m": Pretrained("open_clip", "ViT-SO400M-14-SigLIP", "timm/ViT-SO400M-14-SigLIP", tag="webli",
                                    mean=SIGLIP_MEAN, std=SIGLIP_STD, note="SigLIP So400m/14 text tower, 1152-d"),
    },
}
DEFAULT_VARIANT = {"dino": "vits14", "resnet": "resnet34", "text": "siglip-b16"}
_HUB_FILES = {"timm": ("model.safetensors", "pytorch_model.bin"),
              "open_clip": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")}


def get_spec(kind: str, variant: str | None = None) -> Pretrained:
    """The table entry for (kind, variant); unknown names list the valid ones."""
    if kind not in PRETRAINED:
        raise unknown("pretrained feature kind", kind, PRETRAINED)
    variant = variant or DEFAULT_VARIANT[kind]
    if variant not in PRETRAINED[kind]:
        raise unknown(f"{kind} variant", variant, PRETRAINED[kind])
    return PRETRAINED[kind][variant]


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("HF_HOME", xdg / "huggingface")) / "hub"


def _offline() -> bool:
    """True when the user has told the HF stack to stay offline."""
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _weights_dir_files(spec: Pretrained, weights_dir: str | Path | None) -> list[Path]:
    """The file names accepted in --weights-dir, in order of preference."""
    if weights_dir is None:
        return []
    wd = Path(weights_dir).expanduser()
    if spec.source == "open_clip":
        return [wd / spec.name / f for f in _HUB_FILES["open_clip"]]
    return [wd / f"{spec.name}.safetensors", wd / spec.name / "model.safetensors"] + (
        [wd / spec.url_file] if spec.url_file else [])


def _hf_repo_dir(spec: Pretrained) -> Path:
    return _hf_cache_dir() / ("models--" + spec.hf_hub_id.replace("/", "--"))


def _torch_hub_file(spec: Pretrained) -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints" / spec.url_file] if spec.url_file else []


def resolve_weights(kind: str, variant: str | None = None, weights_dir: str | Path | None = None,
                    allow_download: bool = False) -> Path | None:
    """The weights file for (kind, variant) from weights_dir or the hub caches; None when not found."""
    spec = get_spec(kind, variant)
    for p in _weights_dir_files(spec, weights_dir):
        if p.is_file():
            return p
    from huggingface_hub import try_to_load_from_cache  # reads refs/ and snapshots/, never the network
    for fname in _HUB_FILES[spec.source]:
        hit = try_to_load_from_cache(spec.hf_hub_id, fname, cache_dir=_hf_cache_dir())
        if isinstance(hit, str):
            return Path(hit)
    for p in _torch_hub_file(spec):
        if p.is_file():
            return p
    if allow_download and not _offline():
        return _download(spec)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A 3 s connect test, because huggingface_hub retries a dead network for about 25 s per file."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # behind a proxy a direct connect says nothing; let the download decide
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(spec: Pretrained) -> Path | None:
    """Fetch the weights (and for open_clip the tokenizer files) into the HF cache; None on any failure."""
    if not _hub_reachable():
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        fname = _HUB_FILES[spec.source][0]
        if spec.source == "timm":
            return Path(hf_hub_download(spec.hf_hub_id, fname, cache_dir=_hf_cache_dir(), etag_timeout=10))
        snap = snapshot_download(spec.hf_hub_id, cache_dir=_hf_cache_dir(), etag_timeout=10,
                                 allow_patterns=[fname, "*.json", "*.model", "*.txt"])
        return Path(snap) / fname
    except Exception:  # no network, no such file, rate limits: all mean "not found" to the caller
        return None


def _missing(kind: str, variant: str | None, spec: Pretrained, weights_dir) -> UserError:
    looked = [str(p) for p in _weights_dir_files(spec, weights_dir)] or ["(no --weights-dir given)"]
    looked.append(f"{_hf_repo_dir(spec)}/snapshots/*/{{{','.join(_HUB_FILES[spec.source])}}}")
    looked += [str(p) for p in _torch_hub_file(spec)]
    if spec.source == "timm":
        put = f"put {spec.name}.safetensors (the file model.safetensors of the hub repo) in --weights-dir"
        online = f"python -c \"import timm; timm.create_model('{spec.name}', pretrained=True)\""
    else:
        put = (f"put a copy of the hub repo (open_clip_model.safetensors and the tokenizer files) in "
               f"<weights-dir>/{spec.name}/, e.g. huggingface-cli download {spec.hf_hub_id} "
               f"--local-dir <weights-dir>/{spec.name}")
        online = (f"python -c \"import open_clip; open_clip.create_model('{spec.name}', pretrained='{spec.tag}'); "
                  f"open_clip.get_tokenizer('{spec.name}')\"")
    return UserError(
        f"No weights found for the '{kind}' feature network ({variant or DEFAULT_VARIANT[kind]} = "
        f"{spec.source} '{spec.name}', Hugging Face hub id '{spec.hf_hub_id}'). Looked for: {'; '.join(looked)}. "
        f"To supply them, {put}; or run once on a machine with internet so that it lands in the hub "
        f"cache: {online}; or pick the embedded default source for this prior, which needs no download.")


def build_pretrained_arch(spec: Pretrained) -> nn.Module:
    """The randomly initialised network of a table entry (timm model, or open_clip text tower)."""
    if spec.source == "timm":
        import timm
        return timm.create_model(spec.name, pretrained=False, **spec.arch)
    from open_clip.model import _build_text_tower  # the text tower alone: no 100M+ image tower to build
    cfg, text_cfg = _open_clip_cfg(spec)
    return _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))


def _open_clip_cfg(spec: Pretrained) -> tuple[dict, dict]:
    import copy

    import open_clip
    cfg = copy.deepcopy(open_clip.get_model_config(spec.name))
    arch = dict(spec.arch)
    text_cfg = {**cfg["text_cfg"], **arch.pop("text_cfg", {})}
    return {**cfg, **arch}, text_cfg


class ImageFeatures(nn.Module):
    """Images (B, C, R, R) in [-1, 1] -> a timm net's features: ViT patch tokens or a CNN's last map."""

    def __init__(self, net: nn.Module, spec: Pretrained):
        super().__init__()
        self.net, self.spec = net.eval().requires_grad_(False), spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB, as the nets were trained on colour photos
        x = (x.float() + 1) / 2  # [-1, 1] -> [0, 1], the range the normalisation constants assume
        s = self.spec.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(self.preprocess(x))
        if f.ndim == 3:  # (B, prefix + N, D): drop the class / register tokens, keep the N patches
            f = f[:, self.net.num_prefix_tokens:]
        return f


class TextFeatures(nn.Module):
    """Captions -> L2-normalised embeddings of an open_clip text tower (SigLIP compares by cosine)."""

    def __init__(self, tower: nn.Module, tokenizer, spec: Pretrained):
        super().__init__()
        self.tower, self.tokenizer, self.spec = tower.eval().requires_grad_(False), tokenizer, spec

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(next(self.tower.parameters()).device)
        return F.normalize(self.tower(tokens).float(), dim=-1)  # (B, D)


def _load_text_state(path: Path) -> dict:
    """The text tower's tensors of a whole open_clip checkpoint, 'text.' prefix removed."""
    from open_clip.model import convert_to_custom_text_state_dict
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:  # read only the text keys: So400m is 3.5 GB
            keys = [k for k in f.keys() if k.startswith("text.")] or list(f.keys())
            sd = {k: f.get_tensor(k) for k in keys}
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
    sd = convert_to_custom_text_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    return {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}


def _tokenizer(spec: Pretrained, text_cfg: dict, weights_file: Path):
    """SigLIP's HF tokenizer from the files beside the weights (or the hub cache); else open_clip's BPE."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
    ctx, hf_name = text_cfg["context_length"], text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return SimpleTokenizer(context_length=ctx)
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    here = weights_file.parent
    if (here / "tokenizer_config.json").is_file():
        return HFTokenizer(str(here), context_length=ctx, **kwargs)
    try:
        return HFTokenizer(hf_name, context_length=ctx, cache_dir=str(_hf_cache_dir()), local_files_only=True, **kwargs)
    except Exception as e:
        raise UserError(
            f"The weights {weights_file} were found but not the tokenizer of '{spec.name}' (tokenizer.json, "
            f"tokenizer_config.json and special_tokens_map.json of the hub repo '{hf_name}'): put them in {here}, "
            f"or run once online: python -c \"import open_clip; open_clip.get_tokenizer('{spec.name}')\" ({e}).")


def load_pretrained(kind: str, variant: str | None = None, weights_dir: str | Path | None = None,
                    allow_download: bool = False) -> nn.Module:
    """A frozen feature net in eval mode (ImageFeatures or TextFeatures) with a .provenance dict."""
    spec = get_spec(kind, variant)
    path = resolve_weights(kind, variant, weights_dir, allow_download)
    if path is None:
        raise _missing(kind, variant, spec, weights_dir)
    if spec.source == "timm":
        import timm
        # timm's own loader: safetensors or torch.load(weights_only=True), its checkpoint filter (DINOv2
        # release keys, pos_embed resampled 518 -> 224 px), strict since num_classes stays the checkpoint's.
        try:
            net = timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                    **spec.arch)
        except RuntimeError as e:
            raise UserError(f"The weights file {path} does not fit timm '{spec.name}': {e}") from e
        model = ImageFeatures(net, spec)
    else:
        cfg, text_cfg = _open_clip_cfg(spec)
        tower = build_pretrained_arch(spec)
        try:
            tower.load_state_dict(_load_text_state(path), strict=True)
        except RuntimeError as e:
            raise UserError(f"The weights file {path} does not fit the text tower of '{spec.name}': {e}") from e
        model = TextFeatures(tower, _tokenizer(spec, text_cfg, path), spec)
    model.provenance = dict(kind=kind, variant=variant or DEFAULT_VARIANT[kind], source=spec.source,
                            name=spec.name, tag=spec.tag, hf_hub_id=spec.hf_hub_id, file=str(path),
                            sha256=sha256_file(path))
    return model.eval()
