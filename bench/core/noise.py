"""Random draws of a training step that do not depend on how many processes share the batch.

`BatchNoise` is a generator every rank holds in the same state. A draw for this rank's shard of
b rows is made for the whole global batch (b * world_size rows) and the rank keeps its strided
rows, the same rows `bench/dmvae/loop.py shard_batch` gives it of the data. So the noise of global
sample i is the same with one process or many, and the mean gradient over ranks equals the
single-process gradient (up to float summation order): the trained weights, and every metric
after them, do not depend on the world size.

rand / randn / randint take a plain torch.Generator (or None) too, so the core losses work the
same outside a training loop.
"""
from __future__ import annotations

import torch


class BatchNoise:
    """A seeded generator drawing global-batch noise and returning this rank's strided shard."""

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1):
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size

    def _shard(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.rank::self.world_size]

    def _global(self, shape) -> tuple[int, ...]:
        shape = tuple(shape)
        return (shape[0] * self.world_size, *shape[1:])

    def rand(self, shape, device=None) -> torch.Tensor:
        return self._shard(torch.rand(self._global(shape), generator=self.generator)).to(device)

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        return self._shard(torch.randn(self._global(shape), generator=self.generator)).to(device=device, dtype=dtype)

    def randint(self, low: int, high: int, shape, device=None) -> torch.Tensor:
        return self._shard(torch.randint(low, high, self._global(shape), generator=self.generator)).to(device)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def rand(shape, generator=None, device=None) -> torch.Tensor:
    if isinstance(generator, BatchNoise):
        return generator.rand(shape, device)
    return torch.rand(tuple(shape), generator=generator).to(device) if generator is not None else \
        torch.rand(tuple(shape), device=device)


def randn(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    if isinstance(generator, BatchNoise):
        return generator.randn(shape, device, dtype)
    if generator is not None:
        return torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype)
    return torch.randn(tuple(shape), device=device, dtype=dtype)


def randint(low: int, high: int, shape, generator=None, device=None) -> torch.Tensor:
    if isinstance(generator, BatchNoise):
        return generator.randint(low, high, shape, device)
    return torch.randint(low, high, tuple(shape), generator=generator).to(device)
