"""What every training loop of this package shares: resumable state, data-parallel batches and gradients.

Resume: `Resumable(path, every)` saves the loop's whole state (modules, optimisers, step, the
batch generator and the noise generator, the history so far) with bench/checkpoint.py every
`every` steps (rank 0 writes), and a loop started on the same path continues from the last save,
drawing the same batches and noise it would have drawn: a killed run resumes to the same weights
as an uninterrupted one, with any world size.

Data parallel without a DDP wrapper (the adaptive GAN weight calls autograd.grad, which DDP's
reducer does not allow mid-step): every rank draws the same global batch from the shared
generator and keeps its strided shard (`shard_batch`); the step's noise (t, eps, label dropout,
augmentation) comes from `step_noise`, drawn for the global batch and sharded the same way
(bench/core/noise.py); gradients are averaged over ranks after backward (`average_gradients`).
With equal shards the mean of the ranks' mean losses is the global mean, so training does not
depend on the world size (up to float summation order). In a single process all are no-ops.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

from torch import nn

from bench import distributed as D
from bench.checkpoint import load_state, save_state
from bench.core.ema import ema_update
from bench.core.flow import TimeSampler, flow_matching_loss
from bench.core.noise import BatchNoise
from bench.training import check_finite, clip_gradients, cosine_lr


def shard_batch(rows: torch.Tensor) -> torch.Tensor:
    """This rank's strided part of a global batch (indices, or drawn samples)."""
    if len(rows) % D.world_size():
        raise ValueError(f"a batch of {len(rows)} does not split evenly over {D.world_size()} processes; "
                         f"choose batch sizes divisible by the number of processes (--set <stage>.batch=...), "
                         f"so that training does not depend on the world size")
    return rows[D.rank()::D.world_size()]


def step_noise(seed: int) -> BatchNoise:
    """The training noise of a loop: the same on every rank, each keeping its shard of every draw."""
    return BatchNoise(seed * 1009 + 1, D.rank(), D.world_size())


def average_gradients(params) -> None:
    """Mean of each parameter's gradient over ranks (after backward, before clipping)."""
    if not D.active():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= D.world_size()


def flow_matching_step(net: nn.Module, ema: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, times: TimeSampler,
                       cfg, step: int, noise: BatchNoise, where: str, model=None,
                       autocast=None) -> tuple[float, torch.Tensor]:
    """One data-parallel flow-matching update of `net` and its EMA (the teacher's and the
    generator's step): cosine lr, averaged and clipped gradients. `cfg` needs steps, lr, warmup,
    label_dropout, grad_clip and ema_decay. `model` (default `net`) is what the loss calls, e.g. the
    compiled net; `autocast` a context factory for the forward (bench/compute.py). Returns the loss
    (a non-finite one raises) and the gradient norm before clipping (clipping's own, for the logs)."""
    with (autocast or contextlib.nullcontext)():
        loss = flow_matching_loss(model if model is not None else net, x, y, times, cfg.label_dropout, noise)
    check_finite(loss, step, f"{where}: flow-matching loss")
    for grp in opt.param_groups:
        grp["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(net.parameters())
    grad_norm = clip_gradients(net.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(ema, net, cfg.ema_decay)
    return loss.item(), grad_norm


class Resumable:
    """Periodic checkpoints of a loop's state; `path=None` turns it off."""

    def __init__(self, path: str | Path | None, every: int):
        self.path, self.every = (Path(path) if path else None), every

    def load(self, modules: dict, optimizers: dict, generator: torch.Generator,
             noise: BatchNoise | None = None) -> tuple[int, dict]:
        """Restore from the last save: (the step to start at, the saved extra state); (0, {}) when none."""
        state = load_state(self.path) if self.path else None
        if state is None:
            return 0, {}
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        generator.set_state(state["rng"]["generator"])
        if noise is not None:
            noise.set_state(state["rng"]["noise"])
        return int(state["step"]), state["extra"]

    def maybe_save(self, done: int, total: int, modules: dict, optimizers: dict, generator: torch.Generator,
                   extra: dict, noise: BatchNoise | None = None) -> None:
        """Save after `done` steps when it is a multiple of `every` (and not the last step)."""
        if self.path is None or self.every <= 0 or done % self.every or done == total:
            return
        if D.rank() == 0:
            rng = {"generator": generator.get_state(), **({"noise": noise.get_state()} if noise else {})}
            save_state(self.path, {"step": done, "modules": {k: m.state_dict() for k, m in modules.items()},
                                   "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                                   "rng": rng, "extra": extra})
        D.barrier()


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then constant (the DM stage's schedule, paper section 2)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
