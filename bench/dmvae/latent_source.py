"""Where the generator's training batches come from: latents encoded once (the default), or the
images encoded batch by batch (the reference path the cached one is tested against).

- `CachedLatents`: the train images are encoded once before training, and with `flip` their
  horizontal mirrors too (as LightningDiT caches its ImageNet latents), so a training step is a
  row lookup. The normalisation is measured on the unflipped latents (pipeline.py) and applied
  to both sets.
- `EncodeOnTheFly`: each step encodes its batch's images (mirrored where the step's coin says so)
  with the frozen encoder. Slower; it exists so that the cache can be checked against it: both
  give the same batches, hence the same loss curve (tests/test_latent_source.py).

Which rows are mirrored is a function of (seed, step) alone (`flip_coins`), so a resumed run and
either source draw the same coins, and a run without flip draws none: with flip off, the training
stream is exactly what it was before flip existed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.dmvae.latent_norm import LatentNorm

FLIP_STRIDE = 1_000_033  # coins of step s: Generator().manual_seed(seed * FLIP_STRIDE + s)
SOURCES = ("cached", "on-the-fly")


def flip_coins(seed: int, step: int, batch: int) -> torch.Tensor:
    """(batch,) bools: which rows of step `step`'s global batch are mirrored."""
    g = torch.Generator().manual_seed(seed * FLIP_STRIDE + step)
    return torch.rand(batch, generator=g) < 0.5


def _mirror(rows: torch.Tensor, coins: torch.Tensor) -> torch.Tensor:
    """rows (B, C, H, W) with the rows where coins is True flipped left-right."""
    return torch.where(coins.view(-1, 1, 1, 1).to(rows.device), rows.flip(-1), rows)


class CachedLatents:
    """Normalised latents (N, C, h, w), and with flip those of the mirrored images, on CPU."""

    kind = "cached"

    def __init__(self, latents: torch.Tensor):
        self.latents, self.mirrored, self.table = latents, None, None

    @classmethod
    def of_table(cls, table: torch.Tensor) -> "CachedLatents":
        """From a (2N, C, h, w) table whose row i + N is image i mirrored (cache_latents fills it in place)."""
        out = cls(table[:len(table) // 2])
        out.mirrored, out.table = table[len(table) // 2:], table
        return out

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    def batch(self, idx: torch.Tensor, coins: torch.Tensor | None, fetch) -> torch.Tensor:
        """The latents of rows idx (mirrored where coins), on the stage's device through `fetch`."""
        if coins is None:
            return fetch(self.latents, idx)
        if self.table is None:
            raise ValueError("flip coins given, but the mirrored latents were not encoded")
        return fetch(self.table, idx + coins.long() * len(self.latents))


class EncodeOnTheFly:
    """The images (N, c, R, R), encoded by the frozen encoder and normalised at every step."""

    kind = "on-the-fly"

    def __init__(self, encoder: nn.Module, images: torch.Tensor, norm: LatentNorm):
        self.encoder, self.images, self.norm = encoder.eval().requires_grad_(False), images, norm
        with torch.no_grad():
            self._shape = tuple(encoder(images[:1].to(next(encoder.parameters()).device)).shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, coins: torch.Tensor | None, fetch) -> torch.Tensor:
        x = fetch(self.images, idx)
        if coins is not None:
            x = _mirror(x, coins)
        return self.norm.apply(self.encoder(x).float())


@torch.no_grad()
def cache_latents(encoder: nn.Module, images: torch.Tensor, norm: LatentNorm, flip: bool,
                  raw: torch.Tensor | None = None, batch: int = 256) -> CachedLatents:
    """Encode the images once (and their mirrors with flip) into normalised latents. `raw`: the
    unflipped raw latents when already encoded (the normalisation is measured on them)."""
    dev = next(encoder.parameters()).device
    encoder.eval()

    def enc(mirror: bool):  # batch by batch: images may be an ImageArray (bench/image_store.py)
        for b in images.split(batch):
            yield encoder((b.flip(-1) if mirror else b).to(dev)).float().cpu()
    raw = torch.cat(list(enc(False))) if raw is None else raw
    if not flip:
        return CachedLatents(norm.apply(raw))
    n = len(raw)  # one table, filled in place: raw plus 2N rows at the peak, not five copies
    table = torch.empty((2 * n, *raw.shape[1:]), dtype=raw.dtype)
    table[:n] = norm.apply(raw)
    lo = n
    for z in enc(True):
        table[lo:lo + len(z)] = norm.apply(z)
        lo += len(z)
    return CachedLatents.of_table(table)
