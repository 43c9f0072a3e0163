"""FLOPs per image and model FLOPs utilisation (MFU) of a training stage.

`FlopMeter` counts the FLOPs of a training loop with torch.utils.flop_counter's formulas: the
first step of each *kind* (a loop whose steps differ, like the DM stage's tokenizer turns and
S_fake-only iterations, names the kind) is run under the counter, the others are only tallied, so
the total is exact for the whole loop at the cost of one counted step per kind. What is counted is
FlopCounterMode's set: matmuls, convolutions and attention, forward and backward (including the
adaptive GAN weight's autograd.grad); element-wise work, the optimiser and EMA updates are not,
as usual for MFU. `_Counter` applies FlopCounterMode's formulas in a bare dispatch mode that only
observes each op: FlopCounterMode itself (with its module tracker) changed the rounding of the
counted step on a CPU (measured: the smoke start's loss 0.72574174 -> 0.72574162), while this
counter leaves every number as without it and gives the same totals.

MFU = achieved FLOP/s / (peak FLOP/s x processes), with the GPU's dense bf16 tensor peak from
`PEAK_BF16` (by device name, vendor data sheets). Unknown GPU or a CPU: MFU is not measured and the
record says why; the achieved FLOP/s are recorded either way.
"""
from __future__ import annotations

import collections
import contextlib
import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, matched in order against torch.cuda.get_device_name.
PEAK_BF16 = (
    (r"H200|GH200", 989e12),
    (r"H100.*(PCIe|PCIE)", 756e12),
    (r"H100", 989e12),           # SXM5
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"A10G|\bA10\b", 125e12),
    (r"\bL4\b", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None when it is not in the table."""
    for pattern, peak in PEAK_BF16:
        if re.search(pattern, device_name):
            return peak
    return None


class _Counter(TorchDispatchMode):
    """Sums FlopCounterMode's FLOP formulas over the ops run inside it; runs each op unchanged."""

    def __init__(self):
        super().__init__()
        self.registry = FlopCounterMode(display=False).flop_registry  # torch's formulas, by op packet
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


class FlopMeter:
    """Counts the first step of each kind and tallies every step: the loop's total FLOPs on this process."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.per_kind: dict[str, int] = {}
        self.steps: collections.Counter = collections.Counter()

    def counting(self, kind: str = "step") -> bool:
        """Whether the next step of this kind will be counted (the loop may then run it eagerly)."""
        return self.enabled and kind not in self.per_kind

    @contextlib.contextmanager
    def step(self, kind: str = "step"):
        """Around one training step (forward, backward, update) of the given kind."""
        if not self.counting(kind):
            self.steps[kind] += 1
            yield
            return
        counter = _Counter()
        with counter:
            yield
        self.per_kind[kind] = counter.flops
        self.steps[kind] += 1

    def total(self) -> int | None:
        if not self.enabled:
            return None
        return sum(self.per_kind[k] * n for k, n in self.steps.items())


def efficiency(meter: FlopMeter, images: int, seconds: float, device: torch.device, world_size: int = 1) -> dict:
    """The stage's FLOPs per image, achieved FLOP/s and MFU (or why it is not measured).

    `images` is the number of training images (or prior draws) of the global batches of the timed
    steps; the meter counted this process's shard, so per image is its total / (images / world_size).
    """
    total = meter.total()
    out = {"flops_per_image": None, "flops_per_step_kind": dict(meter.per_kind), "achieved_flop_per_s": None,
           "mfu": None, "peak_flop_per_s": None, "world_size": world_size,
           "counted": "matmul/conv/attention FLOPs, forward + backward (torch.utils.flop_counter formulas), "
                      "first step of each kind counted, the others tallied"}
    if total is None or images <= 0:
        out["mfu_reason"] = "FLOP counting is off (compute.count_flops=false)" if total is None else "no steps run"
        return out
    per_image = total / (images / world_size)
    out["flops_per_image"] = per_image
    out["achieved_flop_per_s"] = per_image * images / max(seconds, 1e-9)
    if device.type != "cuda":
        out["mfu_reason"] = f"not measured: no CUDA device ({device.type}); MFU needs a GPU's peak FLOP/s"
        return out
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_flops(name)
    out["device_name"] = name
    if peak is None:
        out["mfu_reason"] = f"not measured: GPU '{name}' is not in bench/flops.py PEAK_BF16"
        return out
    out["peak_flop_per_s"] = peak
    out["mfu"] = out["achieved_flop_per_s"] / (peak * world_size)
    out["mfu_reason"] = None
    out["peak"] = "dense bf16 tensor peak per GPU (also the reference for fp32/TF32 runs)"
    return out
