"""A class-conditional diffusion transformer over latent token grids (LightningDiT style).

Architecture: patchify -> transformer blocks with adaLN-zero conditioning on (time + label)
embeddings, RMSNorm, QK-norm, SwiGLU MLPs and 2D positions (axial RoPE or fixed sin-cos) ->
linear head -> unpatchify. Called as net(z, t, y) -> v following bench/core/flow.py: t = 1 is
clean data, y == net.num_classes is the null label. The output layer and every adaLN modulation
start at zero, so an untrained net predicts v = 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import unknown

# One line per size: the one table for score nets (S_real, S_fake) and generators. S/B/L/XL are DiT's
# (Peebles & Xie 2023, Table 1); the paper's score nets are "L" by default, "S" and "XL" in Table 2.
# T is a CPU-sized net for tests and the toy runs; P ("pico") is the cpu preset's score nets and
# generator (about 5x faster per step than T on a CPU, where T is dominated by per-op overhead).
POSITIONS = ("rope", "sincos")  # 2D position encodings: axial RoPE in attention, or fixed sin-cos added
DIT_SIZES = {
    "P": dict(depth=2, hidden=64, heads=2),
    "T": dict(depth=4, hidden=192, heads=4),
    "S": dict(depth=12, hidden=384, heads=6),
    "B": dict(depth=12, hidden=768, heads=12),
    "L": dict(depth=24, hidden=1024, heads=16),
    "XL": dict(depth=28, hidden=1152, heads=16),
}


def build_dit(size: str, latent_shape: tuple[int, int, int], num_classes: int, patch_size: int = 1,
              pos: str = "rope") -> "DiT":
    """A fresh velocity DiT of a named size for latents (C, h, h) and `num_classes` labels (+1 null)."""
    if size not in DIT_SIZES:
        raise unknown("DiT size", size, DIT_SIZES)
    c, h, _ = latent_shape
    return DiT(input_size=h, in_channels=c, num_classes=num_classes, patch_size=patch_size, pos=pos,
               **DIT_SIZES[size])


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of t in [0, 1]; t is scaled by 1000 to DiT's frequency range."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _axis_angles(n: int, dim: int, device, theta: float = 10000.0) -> torch.Tensor:
    """Angles (n, dim // 2) of positions 0..n-1 at dim // 2 geometric frequencies."""
    freqs = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    return torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None]


def grid_angles(h: int, w: int, dim: int, device) -> torch.Tensor:
    """2D axial angles (h*w, dim // 2): the first half of the pairs follow rows, the rest columns."""
    rows = _axis_angles(h, dim // 2, device)  # (h, dim // 4)
    cols = _axis_angles(w, dim // 2, device)  # (w, dim // 4)
    return torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)],
                     dim=-1).reshape(h * w, -1)


def sincos_2d(h: int, w: int, dim: int, device) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (h*w, dim): rows in the first half, columns in the second."""
    rows = _axis_angles(h, dim // 2, device)[:, None].expand(h, w, -1)  # (h, w, dim // 4)
    cols = _axis_angles(w, dim // 2, device)[None].expand(h, w, -1)  # (h, w, dim // 4)
    emb = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)  # (h, w, dim)
    return emb.reshape(h * w, dim)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, heads, N, d) by angles with cos/sin (N, d // 2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, heads, N, d // 2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


# --------------------------------------------------------------------------------------------
# Transformer block
# --------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention with per-head RMSNorm on q and k (stabilises large logits)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(hidden // heads, eps=1e-6)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, rope: tuple | None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # (B, heads, N, d)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class SwiGLU(nn.Module):
    """SwiGLU MLP; a 2/3 * ratio hidden width keeps the parameters of a GELU MLP of that ratio."""

    def __init__(self, hidden: int, mlp_ratio: float = 4.0):
        super().__init__()
        inner = 8 * round(2 / 3 * mlp_ratio * hidden / 8)  # a multiple of 8 for fast matmuls
        self.w12 = nn.Linear(hidden, 2 * inner)
        self.w3 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm attention + MLP, each gated and modulated by the conditioning (adaLN-zero)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        # No affine weights in the norms: adaLN supplies the per-sample scale and shift.
        self.norm1 = nn.RMSNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.RMSNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.mlp = SwiGLU(hidden)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple | None) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)  # (B, D) each
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1), rope)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class DiT(nn.Module):
    """Class-conditional velocity network v(z, t, y) on a (B, C, H, W) latent grid."""

    def __init__(self, input_size: int, in_channels: int, num_classes: int, depth: int,
                 hidden: int, heads: int, patch_size: int = 1, pos: str = "rope",
                 freq_dim: int = 256):
        super().__init__()
        if pos not in POSITIONS:
            raise unknown("position encoding", pos, POSITIONS)
        if hidden % heads or (hidden // heads) % 4:
            raise ValueError(f"hidden {hidden} / heads {heads} must give a head size divisible by 4")
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.patch_size, self.pos, self.hidden, self.heads = patch_size, pos, hidden, heads
        self.freq_dim = freq_dim

        self.patch = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.t_embed = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_embed = nn.Embedding(num_classes + 1, hidden)  # the last row is the null label
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(depth))
        self.norm_out = nn.RMSNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.head = nn.Linear(hidden, patch_size * patch_size * in_channels)
        self.reset_parameters()

    def reset_parameters(self):
        """DiT's init: xavier linears, N(0, 0.02) embeddings, zero adaLN and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # The patch conv is a linear map on flattened patches: init it like one.
        nn.init.xavier_uniform_(self.patch.weight.view(self.hidden, -1))
        nn.init.zeros_(self.patch.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-zero: every residual branch starts closed, so each block starts as the identity.
        for lin in [b.ada[1] for b in self.blocks] + [self.ada_out[1], self.head]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, C, H, W = z.shape
        p = self.patch_size
        h, w = H // p, W // p
        x = self.patch(z).flatten(2).transpose(1, 2)  # (B, h*w, D)
        # Position tables are recomputed per call (cheap): no buffers, so a meta-built
        # model needs nothing re-materialised and any grid size divisible by p works.
        rope = None
        if self.pos == "sincos":
            x = x + sincos_2d(h, w, self.hidden, z.device).to(x.dtype)
        else:
            ang = grid_angles(h, w, self.hidden // self.heads, z.device)  # (h*w, d // 2)
            rope = (ang.cos(), ang.sin())
        c = self.t_embed(timestep_embedding(t, self.freq_dim).to(x.dtype)) + self.y_embed(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c, rope)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        x = self.head(modulate(self.norm_out(x), shift, scale))  # (B, h*w, p*p*C)
        # Unpatchify: (B, h, w, p, p, C) -> (B, C, h, p, w, p) -> (B, C, H, W)
        return x.view(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
