"""bench/distributed.py: no-ops without torchrun, and real reductions under gloo with 2 processes."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from bench import distributed as D


def test_single_process_is_a_no_op():
    D.init()
    assert D.rank() == 0 and D.world_size() == 1 and not D.active()
    assert list(D.shard(5)) == [0, 1, 2, 3, 4]
    assert D.all_reduce_sum(torch.tensor([1.5])).dtype == torch.float64
    with D.rank0_first():
        pass


def _worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    D.init()
    mine = list(D.shard(7))
    total = D.all_reduce_sum(torch.tensor([float(sum(mine)), float(len(mine))]))
    out[rank] = total.tolist() + [D.world_size()]
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_gloo_two_processes_cover_all_indices_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    assert out[0] == out[1] == [21.0, 7.0, 2]  # 0+..+6 and 7 indices, across both ranks
