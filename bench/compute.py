"""GPU efficiency settings of the training stages: bf16 autocast, TF32, fused AdamW, torch.compile, pinned batches.

One study-level section, `compute` (`--set compute.precision=bf16`), read by the four training stages
(teacher, start, dmvae, generator). Every setting is applied ONLY on a CUDA device; on a CPU each is
recorded as not applied, with the reason, and training runs exactly as without it (same numbers,
same stage keys). What each setting does where it applies:

- precision "bf16": the training forward passes and losses run under torch.autocast(cuda, bfloat16),
  limited to the stages in `stages`; weights, gradients, optimiser states and EMA copies stay fp32,
  and evaluation (metrics, sampling) is never autocast.
- tf32: matmuls and convolutions that run in fp32 may use TF32 tensor cores (restored after the stage;
  when off, PyTorch's defaults are left as they are).
- fused_adamw: AdamW(fused=True), one kernel for the whole update.
- compile: torch.compile of the DiT score nets and generator (opt-in; the tokenizer's convs stay
  eager, since its adaptive GAN weight takes autograd.grad through the decoder's last layer).
- pin_memory: each batch is gathered into page-locked host memory and copied to the GPU
  asynchronously. The splits are in-memory tensors, or with `image_store=memmap` ImageArrays over a
  uint8 file decoded once by DataLoader workers (bench/image_store.py), whose rows are read and
  converted to float32 here, at fetch time; no DataLoader iterates files during training.

The settings that change numbers (precision, tf32, fused_adamw, compile) enter a stage's key only
when they are applied there (`Compute.key`), so a CPU run and an fp32 GPU run keep today's keys.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from bench.config import SettingError, require
from bench.flops import FlopMeter, efficiency

PRECISIONS = ("fp32", "bf16")
TRAINING_STAGES = ("teacher", "start", "dmvae", "generator")
NO_CUDA = "no CUDA device (applied only on CUDA)"


@dataclass(frozen=True)
class ComputeConfig:
    """How the training stages use an accelerator; none of it is applied on a CPU."""

    precision: str = "fp32"        # fp32 | bf16 (autocast of the training forward passes)
    stages: tuple[str, ...] = TRAINING_STAGES  # the stages that precision and compile apply to
    tf32: bool = False             # TF32 tensor cores for fp32 matmuls/convs
    fused_adamw: bool = False      # AdamW(fused=True)
    compile: bool = False          # torch.compile the DiTs (opt-in)
    pin_memory: bool = True        # page-locked host batches, async copies (does not change numbers)
    count_flops: bool = True       # FLOPs of the first step of each kind (does not change numbers)

    def __post_init__(self):
        require(self, choices={"precision": PRECISIONS})
        bad = [s for s in self.stages if s not in TRAINING_STAGES]
        if bad:
            raise SettingError("stages", f"must name training stages among {', '.join(TRAINING_STAGES)}",
                               self.stages)


class Compute:
    """The compute settings as they apply to one stage on one device."""

    def __init__(self, cfg: ComputeConfig | None, stage: str, device: torch.device | str):
        self.cfg, self.stage = cfg or ComputeConfig(), stage
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        in_stage = stage in self.cfg.stages
        self.bf16 = cuda and in_stage and self.cfg.precision == "bf16"
        self.tf32 = cuda and self.cfg.tf32
        self.fused = cuda and self.cfg.fused_adamw
        self.compiled = cuda and in_stage and self.cfg.compile
        self.pin = cuda and self.cfg.pin_memory

        def why(requested: bool, stage_bound: bool = False) -> str | None:
            if not requested:
                return "not requested"
            if not cuda:
                return NO_CUDA
            if stage_bound and not in_stage:
                return f"stage '{stage}' is not in compute.stages"
            return None
        self.settings = {
            "precision": {"requested": self.cfg.precision, "applied": "bf16" if self.bf16 else "fp32",
                          "reason": why(self.cfg.precision == "bf16", True)},
            "tf32": {"requested": self.cfg.tf32, "applied": self.tf32, "reason": why(self.cfg.tf32)},
            "fused_adamw": {"requested": self.cfg.fused_adamw, "applied": self.fused,
                            "reason": why(self.cfg.fused_adamw)},
            "compile": {"requested": self.cfg.compile, "applied": self.compiled,
                        "reason": why(self.cfg.compile, True)},
            "pin_memory": {"requested": self.cfg.pin_memory, "applied": self.pin, "reason": why(self.cfg.pin_memory)},
        }

    def key(self) -> dict | None:
        """The applied settings that change numbers, or None when there are none (the stage key stays as it was)."""
        k = {name: True for name, on in (("bf16", self.bf16), ("tf32", self.tf32), ("fused_adamw", self.fused),
                                         ("compile", self.compiled)) if on}
        return k or None

    def autocast(self):
        """The training forward's autocast context (a no-op unless bf16 applies)."""
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def adamw(self, params, **kwargs) -> torch.optim.AdamW:
        """AdamW, fused where that applies; the same arguments otherwise."""
        if self.fused:
            kwargs["fused"] = True
        return torch.optim.AdamW(params, **kwargs)

    def compile(self, module: torch.nn.Module):
        """The module compiled (when compile applies) or itself; parameters are shared either way."""
        return torch.compile(module) if self.compiled else module

    def fetch(self, tensor, idx: torch.Tensor) -> torch.Tensor:
        """tensor[idx] on the stage's device: through pinned memory and an async copy on CUDA. `tensor` may
        be an ImageArray (bench/image_store.py): its rows are read and converted to float32, then pinned."""
        if not isinstance(tensor, torch.Tensor):
            rows = tensor[idx]  # a fresh float tensor
            return rows.pin_memory().to(self.device, non_blocking=True) if self.pin else rows.to(self.device)
        if not self.pin:
            return tensor[idx].to(self.device)
        buf = torch.empty((len(idx), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
        torch.index_select(tensor, 0, idx, out=buf)  # the caching host allocator keeps buf alive for the copy
        return buf.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def session(self):
        """Around a stage: TF32 flags set (and restored) and the CUDA peak-memory counter reset."""
        if self.device.type != "cuda":
            yield
            return
        before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if self.tf32:  # otherwise PyTorch's own defaults stay (fp32 matmuls; cuDNN decides for convs)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before

    def peak_memory(self) -> dict:
        """Peak CUDA memory allocated during the stage (torch.cuda.max_memory_allocated), or why not measured."""
        if self.device.type != "cuda":
            return {"bytes": None, "reason": "no CUDA device: torch.cuda.max_memory_allocated measures GPU memory"}
        return {"bytes": int(torch.cuda.max_memory_allocated(self.device)), "reason": None}

    def meter(self) -> FlopMeter:
        """A FLOP meter for the stage's loop (off when compute.count_flops is false)."""
        return FlopMeter(self.cfg.count_flops)

    def record(self, meter: FlopMeter, images: int, seconds: float, world_size: int = 1) -> dict:
        """What the stage's record says about compute: settings (applied or why not), FLOPs/MFU, peak memory."""
        return {"settings": self.settings, **efficiency(meter, images, seconds, self.device, world_size),
                "peak_memory": self.peak_memory()}
