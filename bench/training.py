"""Plumbing every training loop shares: the learning-rate schedule, the non-finite guard, the progress line.

Used by the stage loops (bench/dmvae) and the local feature-net trainers (bench/features) alike.
"""
from __future__ import annotations

import math
import time

import torch


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 (the teacher, the generator and the local trainers)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/Inf: the message names the step and what was being trained."""


def check_finite(value: torch.Tensor, step: int, what: str) -> None:
    """Stop at the first non-finite loss, naming it ("DM stage: DM loss"), instead of training on garbage."""
    if not torch.isfinite(value):
        raise NonFiniteLoss(f"{what}: non-finite loss ({value.item()}) at step {step}; lower the learning rate "
                            f"or check the inputs for non-finite values.")


def log_progress(what: str, step: int, steps: int, loss: float, t0: float, every: int) -> None:
    """One compact line every `every` steps and at the last step: step, loss, elapsed and ETA."""
    if every > 0 and (step % every == 0 or step == steps - 1):
        elapsed = time.time() - t0
        eta = elapsed / (step + 1) * (steps - step - 1)
        print(f"[{what}] step {step + 1}/{steps} loss {loss:.4f} {elapsed:.0f}s ETA {eta:.0f}s", flush=True)


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """Clip the gradients' total norm to max_norm and return that norm (before clipping). max_norm 0
    means no clipping: torch's clip_grad_norm_ would scale every gradient to zero there."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
