"""What every training loop of this package shares: resumable state, data-parallel batches and gradients.

Resume: `Resumable(path, every)` saves the loop's whole state (modules, optimisers, step, RNG
states, the history so far) with bench/checkpoint.py every `every` steps (rank 0 writes), and a
loop started on the same path continues from the last save, drawing the same batches and noise
it would have drawn: a killed single-process run resumes to the same weights as an uninterrupted
one (with several ranks the batches are the same, the per-rank noise is re-seeded).

Data parallel without a DDP wrapper (the adaptive GAN weight calls autograd.grad, which DDP's
reducer does not allow mid-step): every rank draws the same global batch from the shared
generator and keeps its strided shard (`shard_batch`), then gradients are averaged over ranks
after backward (`average_gradients`). The global batch and the data order are thus the same for
any world size. In a single process both are no-ops.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from bench import distributed as D
from bench.checkpoint import load_state, save_state


def shard_batch(rows: torch.Tensor) -> torch.Tensor:
    """This rank's strided part of a global batch (indices, or drawn samples)."""
    return rows[D.rank()::D.world_size()]


def seed_noise(seed: int) -> None:
    """Seed the global RNG (t, eps, label dropout) differently per rank; call after building the
    modules, whose initialisation must be the same on every rank."""
    torch.manual_seed(seed * 1009 + 1 + D.rank())


def average_gradients(params) -> None:
    """Mean of each parameter's gradient over ranks (after backward, before clipping)."""
    if not D.active():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= D.world_size()


class Resumable:
    """Periodic checkpoints of a loop's state; `path=None` turns it off."""

    def __init__(self, path: str | Path | None, every: int):
        self.path, self.every = (Path(path) if path else None), every

    def load(self, modules: dict, optimizers: dict, generator: torch.Generator) -> tuple[int, dict]:
        """Restore from the last save: (the step to start at, the saved extra state); (0, {}) when none."""
        state = load_state(self.path) if self.path else None
        if state is None:
            return 0, {}
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        if D.world_size() > 1:  # only rank 0's noise state was saved: fresh per-rank noise from here
            torch.manual_seed(int(state["step"]) * 1009 + 1 + D.rank())
        return int(state["step"]), state["extra"]

    def maybe_save(self, done: int, total: int, modules: dict, optimizers: dict, generator: torch.Generator,
                   extra: dict) -> None:
        """Save after `done` steps when it is a multiple of `every` (and not the last step)."""
        if self.path is None or self.every <= 0 or done % self.every or done == total:
            return
        if D.rank() == 0:
            rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_state(self.path, {"step": done, "modules": {k: m.state_dict() for k, m in modules.items()},
                                   "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                                   "rng": rng, "extra": extra})
        D.barrier()
