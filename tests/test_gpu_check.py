"""scripts/gpu_check.sh and its Python parts, on a CPU: it refuses to run without CUDA, and its table is built
from a study's results.json, the bf16/fp32 agreement and the world-size-1 distributed step. The check itself
has not been run on a GPU here."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_fails_fast_without_cuda(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                       text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 3 and "no CUDA device" in r.stderr and "--cpu-dry-run" in r.stderr
    assert not (tmp_path / "out").exists()


def test_table_from_results_agreement_and_ddp(tmp_path):
    mod = _module()
    stage = {"settings": {"precision": {"requested": "bf16", "applied": "fp32", "reason": "no CUDA device"}},
             "flops_per_image": 2e9, "achieved_flop_per_s": 3e12, "mfu": None, "mfu_reason": "not measured: no CUDA",
             "peak_memory": {"bytes": None, "reason": "no CUDA"}}
    gpu_stage = {**stage, "mfu": 0.25, "peak_memory": {"bytes": 3 * 2 ** 30, "reason": None}}
    res = {"meta": {"command": "run_all.py --preset gpu", "device": "cpu"},
           "priors": {"gaussian": {"status": "ok", "per_training_seed": {"0": {
               "throughput_img_per_s": {"teacher": 1500.0, "generator": 1200.0},
               "compute": {"teacher": stage, "generator": gpu_stage}}}}}}
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "results.json").write_text(json.dumps(res))
    agree = mod.agree(tmp_path, tiny=True)
    assert agree["agree"] and len(agree["rows"]) == 3
    ddp = mod.ddp(tmp_path)  # not under torchrun: the single-process path of bench/distributed.py
    assert ddp["world_size"] == 1 and ddp["all_reduce_sum_of_ones"] == 3.0
    text = mod.table(tmp_path)
    assert (tmp_path / "gpu_check.md").read_text() == text
    assert "| gaussian | teacher | 1500.0 | 2.000 | 3.000 | not measured: no CUDA | not measured (no CUDA) | fp32 |" in text
    assert "| gaussian | generator | 1200.0 | 2.000 | 3.000 | 25.0% | 3.00 | fp32 |" in text
    assert "bf16 against fp32" in text and "Agree within tolerance: yes" in text and "world size 1" in text


@pytest.mark.slow
def test_cpu_dry_run_writes_the_table(tmp_path):
    """The whole script at toy size on a CPU (about 90 s on 2 cores): study, agreement, torchrun (gloo), table."""
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "--cpu-dry-run"],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "gpu_check.md").read_text()
    for prior in ("gaussian", "gmm"):
        for stage in ("teacher", "start", "dmvae", "generator"):
            assert f"| {prior} | {stage} |" in text
    assert "backend gloo, world size 1" in text and "Agree within tolerance: yes" in text
