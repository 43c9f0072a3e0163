"""The one place for distributed code: works the same with and without torchrun.

`init()` joins the process group when torchrun's variables are set (gloo on CPU, nccl on GPU;
multi-node through torchrun's usual MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE) and does nothing
otherwise. Training loops never branch on DDP: they call rank()/world_size()/barrier() and
`all_reduce_sum`, which are no-ops in a single process.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group if launched by torchrun; idempotent."""
    if dist.is_available() and not dist.is_initialized() and "RANK" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def device() -> torch.device:
    """This process's device: its GPU under torchrun with CUDA, else the first GPU or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


@contextlib.contextmanager
def rank0_first():
    """Rank 0 runs the block first (downloads, cache builds); the others then find it done."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes in float64 (metric statistics are reduced once, exactly)."""
    out = t.to(torch.float64).clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes, in the tensor's dtype (gradients); the tensor itself without DDP."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def shard(n: int) -> range:
    """The indices 0..n-1 this process handles (strided, so any world size covers all once)."""
    return range(rank(), n, world_size())
