"""A residual MLP velocity network for low-dimensional data (the 2D toy of the paper's Fig. 3).

Called as net(z, t, y) -> v like every network of the suite (bench/core/flow.py): z (B, dim),
t (B,) in [0, 1] with t = 1 clean, y (B,) long with y == net.num_classes the null label.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.dit import timestep_embedding


class ResBlock(nn.Module):
    """Pre-norm residual block: h + W2 silu(W1 LN(h))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h))))  # (B, hidden)


class ScoreMLP(nn.Module):
    """Class-conditional velocity MLP v(z, t, y) for (B, dim) points."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 1,
                 freq_dim: int = 64):
        super().__init__()
        self.dim, self.num_classes, self.freq_dim = dim, num_classes, freq_dim
        self.inp = nn.Linear(dim, hidden)
        self.t_embed = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_embed = nn.Embedding(num_classes + 1, hidden)  # the last row is the null label
        self.blocks = nn.ModuleList(ResBlock(hidden) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        # Zero output layer: an untrained net predicts v = 0, like the DiT.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The (t, y) embedding is added once to the input and carried by the residual stream;
        # per-block conditioning would cost a third more matmuls for little gain in 2D.
        c = self.t_embed(timestep_embedding(t, self.freq_dim).to(z.dtype)) + self.y_embed(y)
        h = self.inp(z) + c  # (B, hidden)
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm_out(h))  # (B, dim)
