"""The toy's figure: one row per objective, one column per snapshot, target in grey."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_figure(path: Path, target, teacher_pts, snapshots: dict, cfg) -> None:
    """Points per objective over training, plus the teacher's own samples."""
    ref = target(4096, torch.Generator().manual_seed(99)).numpy()
    rows = [("teacher ODE", [teacher_pts])] + list(snapshots.items())
    cols = max(len(s) for _, s in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows)), squeeze=False)
    for r, (name, snaps) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlim(-1.6, 1.6), ax.set_ylim(-1.6, 1.6), ax.set_aspect("equal")
            if c >= len(snaps):
                ax.axis("off")
                continue
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.85", rasterized=True)
            p = snaps[c].numpy()
            ax.scatter(p[:, 0], p[:, 1], s=1.5, c="C0" if r else "C2", rasterized=True)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 1 or (r == 0 and c == 0):
                frac = c / max(1, len(snaps) - 1)
                ax.set_title("samples" if r == 0 else f"{frac:.0%} of {cfg.steps} steps", fontsize=8)
    fig.suptitle(f"toy2d: target '{cfg.target}', {cfg.n_points} points, k={cfg.k}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
