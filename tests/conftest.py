"""Shared test setup."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
