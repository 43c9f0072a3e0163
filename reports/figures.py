"""The report's figures, drawn with matplotlib from results.json and the saved figure data.

Each function returns a Figure (file + caption) or a note saying why it was left out: missing data
never stops a report. Drawn files go to <out>/figures/; the image grids and the toy figure are
already PNGs (written by the runner and by `run_all.py toy2d`) and are shown as they are.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_png  # noqa: E402

from reports.data import guidance_summary  # noqa: E402
from reports.results import Study, figure_file  # noqa: E402
from reports.tables import ok_priors, swept_scales  # noqa: E402

DPI = 110


@dataclass
class Figure:
    path: Path
    caption: str


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def convergence(study: Study) -> Figure | str:
    """gFID against generator epochs, all priors on one plot (paper Fig. 6)."""
    res = study.results
    curves = {n: r["convergence"] for n, r in ok_priors(res).items() if r.get("convergence")} if res else {}
    if not curves:
        return "Convergence curves are left out: no prior of this run finished with a convergence record."
    n = res["meta"]["config"]["eval"].get("convergence_n")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in curves.items():
        ax.plot([p["epoch"] for p in pts], [p["gfid"] for p in pts], marker="o", label=name)
    ax.set_xlabel("generator epoch")
    ax.set_ylabel(f"gFID-{n} (first sampling seed)")
    ax.set_title("Convergence of the downstream generator")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = _save(fig, study.out / "figures" / "convergence.png")
    return Figure(path, f"gFID-{n} (seed {res['meta']['config']['eval']['seeds'][0]}) at each generator checkpoint, "
                        f"every prior of this run (the paper's Fig. 6 plots gFID-50k against epochs).")


def guidance_points(results: dict) -> dict[str, list[dict]]:
    """The guidance sweep's gFID per prior and scale (mean over training seeds, std as the sweep table shows
    it): the figure's data, also written beside it as JSON."""
    summ = guidance_summary(results)
    out = {}
    for name in ok_priors(results):
        points = []
        for w in swept_scales(summ, name):
            got = summ.loc[(name, "gfid_cfg", w)]
            sd = got["training_std"] if got["seeds"] > 1 else got["sampling_std"]
            points.append({"scale": w, "gfid": float(got["mean"]), "std": float(sd), "training_seeds": int(got["seeds"])})
        if points:
            out[name] = points
    return out


def guidance_sweep(study: Study) -> Figure | None:
    """gFID against the CFG scale, one line per prior (error bars: the sweep table's std); None without a sweep.
    Its data goes to <out>/figures/guidance_sweep.json beside the PNG."""
    res = study.results
    points = guidance_points(res) if res else {}
    if not points:
        return None
    ev = res["meta"]["config"]["eval"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in points.items():
        ax.errorbar([p["scale"] for p in pts], [p["gfid"] for p in pts], yerr=[p["std"] for p in pts], marker="o",
                    capsize=3, label=name)
    ax.axvline(ev.get("cfg_scale", 1.0), color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("CFG scale w (v_u + w (v_c - v_u))")
    ax.set_ylabel(f"gFID-{ev.get('gfid_n')} (mean ± std)")
    ax.set_title("Guidance sweep of the downstream generator")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    folder = study.out / "figures"
    atomic_write_json(folder / "guidance_sweep.json", {"x": "cfg scale", "y": f"gFID-{ev.get('gfid_n')}",
                                                       "priors": points})
    path = _save(fig, folder / "guidance_sweep.png")
    return Figure(path, f"gFID-{ev.get('gfid_n')} against the CFG scale, every prior of this run (guided samples; the "
                        f"dotted line is Table 1's scale {ev.get('cfg_scale', 1.0):g}); error bars: the std over "
                        f"training seeds, or over sampling seeds with one training seed.")


def tsne_panels(study: Study) -> tuple[Figure | None, list[str]]:
    """Reference vs DMVAE latents per prior, coloured by class (paper Fig. 4)."""
    res, notes, panels = study.results, [], []
    for name, r in (ok_priors(res).items() if res else []):
        path = figure_file(study, (r.get("figure_data") or {}).get("tsne"))
        if path is None:
            notes.append(f"t-SNE panel of '{name}' left out: its figure data file is missing.")
            continue
        try:
            panels.append((name, json.loads(path.read_text())))
        except ValueError:
            notes.append(f"t-SNE panel of '{name}' left out: {path.name} is not valid JSON.")
    if not panels:
        return None, notes or ["t-SNE panels are left out: no prior of this run has t-SNE data."]
    # the paper's layout: one column per prior, reference on top, DMVAE latents below
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels) + 0.4, 5.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for col, (name, d) in enumerate(panels):
        for row, side, title in ((0, "reference", "reference p_r"), (1, "dmvae", "DMVAE latents")):
            ax, xy, y = axes[row][col], d.get(f"{side}_xy") or [], d.get(f"{side}_labels") or []
            if xy:
                ax.scatter([p[0] for p in xy], [p[1] for p in xy], c=[cmap(int(c) % 10) for c in y], s=3)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    per = res["meta"]["config"]["eval"].get("tsne_per_class")
    path = _save(fig, study.out / "figures" / "tsne.png")
    return Figure(path, f"t-SNE (fixed seed) of {per} latents per class, coloured by class: the reference "
                        f"distribution (top) and the DMVAE's latents of held-out images (bottom), one column per "
                        f"prior "
                        f"(the paper's Fig. 4)."), notes


def image_grids(study: Study) -> tuple[list[Figure], list[str]]:
    """Reconstruction and sample grids per prior (PNG files written by the runner)."""
    res, figs, notes = study.results, [], []
    for name, r in (ok_priors(res).items() if res else []):
        files = r.get("figure_data") or {}
        for key, caption in (("recon_grid", "held-out images (odd rows) above their reconstructions (even rows)"),
                             ("sample_grid", "samples of the first sampling seed, class = column (label i mod K), "
                                             "the very samples scored by gFID")):
            path = figure_file(study, files.get(key))
            if path is None:
                notes.append(f"The {key.replace('_', ' ')} of '{name}' is left out: its PNG is missing.")
                continue
            try:
                figs.append(Figure(_upscaled(path, study.out / "figures" / path.name), f"{name}: {caption}"))
            except (OSError, ValueError, SyntaxError) as e:  # a damaged PNG: say so, keep the report
                notes.append(f"The {key.replace('_', ' ')} of '{name}' is left out: {path.name} is unreadable ({e}).")
    return figs, notes


def _upscaled(src: Path, dst: Path, factor: int = 3) -> Path:
    """A nearest-neighbour enlargement of a small image grid (32 px images are hard to see at 1x)."""
    img = plt.imread(src)  # floats in [0, 1]
    big = img.repeat(factor, axis=0).repeat(factor, axis=1)
    atomic_write_png(dst, (big * 255).round().astype("uint8"))
    return dst


def toy2d(study: Study) -> Figure | str | None:
    """The 2D toy's figure, when <out>/toy2d holds a run (None: no toy in this folder)."""
    if study.toy is None:
        return None
    rel = study.toy.get("figure")
    path = figure_file(study, f"toy2d/{rel}") if rel else None
    if path is None:
        return "The 2D toy figure is left out: toy2d.json names no figure file, or the file is missing."
    return Figure(path, "The paper's 2D toy (Fig. 3), measured: each objective moves the same uniform cloud "
                        "towards the target with the same budget.")
