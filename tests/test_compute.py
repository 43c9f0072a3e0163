"""GPU efficiency settings (bench/compute.py), FLOP counting and MFU (bench/flops.py), the meta-device memory
estimate (bench/memory_estimate.py). Everything here runs on a CPU: the CUDA branches are checked through
their decisions (Compute with device "cuda" allocates nothing), never measured."""
import pytest
import torch

from bench.compute import NO_CUDA, Compute, ComputeConfig
from bench.config import UserError, resolve
from bench.dmvae import TEACHER_PRESETS, train_teacher
from bench.flops import FlopMeter, efficiency, peak_bf16_flops
from bench.study.config import STUDY_PRESETS, StudyConfig
from bench.study.pipeline import _compute_keys
from dataclasses import replace

from priors.analytic import Gaussian
from priors.base import PriorSettings


def test_nothing_applies_on_cpu_and_each_setting_says_why():
    cx = Compute(ComputeConfig(precision="bf16", tf32=True, fused_adamw=True, compile=True), "teacher", "cpu")
    assert cx.key() is None
    for name in ("precision", "tf32", "fused_adamw", "compile", "pin_memory"):
        assert cx.settings[name]["reason"] == NO_CUDA, name
    assert cx.settings["precision"]["applied"] == "fp32"
    net = torch.nn.Linear(3, 2)
    assert cx.compile(net) is net
    assert not cx.adamw(net.parameters(), lr=1e-3).defaults.get("fused")
    x, idx = torch.randn(10, 3), torch.tensor([3, 1, 3])
    assert torch.equal(cx.fetch(x, idx), x[idx])
    with cx.autocast():
        assert net(x).dtype == torch.float32


def test_cuda_decisions_and_stage_keys():
    cfg = ComputeConfig(precision="bf16", tf32=True, fused_adamw=True, stages=("generator",))
    gen, teacher = Compute(cfg, "generator", "cuda"), Compute(cfg, "teacher", "cuda")
    assert gen.key() == {"bf16": True, "tf32": True, "fused_adamw": True}
    assert teacher.key() == {"tf32": True, "fused_adamw": True}  # precision limited to compute.stages
    assert "not in compute.stages" in teacher.settings["precision"]["reason"]
    assert Compute(ComputeConfig(), "dmvae", "cuda").key() is None  # fp32 defaults: today's keys on a GPU too


def test_keys_on_cpu_do_not_change_with_compute_settings():
    plain = resolve(StudyConfig, STUDY_PRESETS, "smoke", overrides=["priors=gaussian"])
    asked = resolve(StudyConfig, STUDY_PRESETS, "smoke", overrides=["priors=gaussian", "compute.precision=bf16",
                                                                     "compute.compile=true"])
    assert _compute_keys(plain) == _compute_keys(asked) == {s: () for s in ("teacher", "start", "dmvae", "generator")}


def test_presets_and_validation():
    for name in ("smoke", "cpu"):
        assert resolve(StudyConfig, STUDY_PRESETS, name, overrides=["priors=gaussian"]).compute == ComputeConfig()
    gpu = resolve(StudyConfig, STUDY_PRESETS, "gpu", overrides=["priors=gaussian"]).compute
    assert (gpu.precision, gpu.tf32, gpu.fused_adamw, gpu.compile) == ("bf16", True, True, False)
    with pytest.raises(UserError, match="compute.precision"):
        resolve(StudyConfig, STUDY_PRESETS, "smoke", overrides=["priors=gaussian", "compute.precision=fp16"])
    with pytest.raises(UserError, match="compute.stages"):
        resolve(StudyConfig, STUDY_PRESETS, "smoke", overrides=["priors=gaussian", "compute.stages=eval"])


def test_flop_meter_counts_a_linear_layer_exactly_and_tallies_kinds():
    net = torch.nn.Linear(8, 4)
    meter = FlopMeter()
    for i in range(3):
        kind = "a" if i < 2 else "b"
        with meter.step(kind):
            net(torch.randn(5, 8, requires_grad=True)).sum().backward()
    # forward 2*B*in*out, backward twice that (input and weight gradients); bias adds are not counted
    assert meter.per_kind == {"a": 6 * 5 * 8 * 4, "b": 6 * 5 * 8 * 4}
    assert meter.total() == 3 * 6 * 5 * 8 * 4
    rec = efficiency(meter, images=15, seconds=2.0, device=torch.device("cpu"))
    assert rec["flops_per_image"] == 6 * 8 * 4 and rec["achieved_flop_per_s"] == 6 * 8 * 4 * 15 / 2.0
    assert rec["mfu"] is None and "no CUDA device" in rec["mfu_reason"]
    assert efficiency(FlopMeter(False), 15, 2.0, torch.device("cpu"))["flops_per_image"] is None


def test_peak_table():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12 and peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("Tesla V100-SXM2-16GB") is None


def _teacher(data, compute):
    prior = Gaussian(PriorSettings(latent_channels=4, latent_size=4), data).build()
    stats = {}
    net, _ = train_teacher(prior, replace(TEACHER_PRESETS["smoke"], steps=6, batch=8), stats, compute=compute)
    return net, stats


def test_counting_and_cpu_bf16_leave_the_trained_weights_bit_identical(data):
    a, stats = _teacher(data, ComputeConfig(count_flops=False))
    b, stats_b = _teacher(data, ComputeConfig(precision="bf16", count_flops=True))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert stats["compute"]["flops_per_image"] is None
    rec = stats_b["compute"]
    assert rec["flops_per_image"] == rec["flops_per_step_kind"]["step"] / 8 > 0
    assert rec["settings"]["precision"] == {"requested": "bf16", "applied": "fp32", "reason": NO_CUDA}
    assert rec["peak_memory"]["bytes"] is None


@pytest.mark.slow
def test_paper_memory_estimate_on_the_meta_device():
    from bench.memory_estimate import estimate
    cfg = resolve(StudyConfig, STUDY_PRESETS, "paper", overrides=["priors=gaussian"])
    est = estimate(cfg, gpus=8)
    assert est["per_gpu_batch"]["generator"] == 32
    assert 670e6 < est["params"]["generator"] < 680e6 and 455e6 < est["params"]["score_net"] < 460e6
    gen = est["stages"]["generator"]
    assert gen["state"] == est["params"]["generator"] * 20  # fp32 weights, grads, two AdamW moments, EMA
    assert 0 < gen["activations"] and est["peak_gib"] == max(s["total_gib"] for s in est["stages"].values())
    assert est["peak_gib"] < 141  # fits one H200 as estimated (see README for the numbers)
