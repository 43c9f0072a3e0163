"""Results as data: one tidy row per (run, prior, training seed, metric), for notebooks and for the report.

    frame = load_results("runs/a", "runs/b")          # a pandas.DataFrame, columns COLUMNS
    frame.pivot_table(index="prior", columns="metric", values="value", aggfunc="mean")

Every study run also writes this table as <out>/results.csv beside results.json (bench/study/runner.py).
A row is one measured number of one training seed: `value` is the number, `std` its sampling
spread where one exists (gFID, KID, precision/recall: sample std over the sampling seeds), `n` the
sample size it was measured at, `sampling_seeds` the generator seeds it averages, `cfg_scale` the
classifier-free guidance scale its samples were drawn at (metrics of generated samples only: Table 1's
gfid/kid/precision/recall at eval.cfg_scale; the guidance sweep's gfid_cfg/precision_cfg/recall_cfg,
one row per swept scale). Metrics a prior does not have (the vae row has no matching statistics, a
run without eval.cfg_scales no sweep) have no row: nothing is filled in. Per-class FID stays in
results.json (guidance.per_class): one number per class and scale is not one row per metric.
No torch here, like the rest of reports/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

COLUMNS = ["run", "ablation", "prior", "training_seed", "metric", "value", "std", "n", "sampling_seeds", "cfg_scale",
           "higher_is_better", "config_hash", "commit"]


@dataclass(frozen=True)
class Metric:
    """One column of Table 1 and friends: where it sits in a training seed's entry and which way is better."""

    name: str
    higher_is_better: bool | None  # None: not a score (a floor, a rate of change)
    get: Callable[[dict], tuple | list]  # entry -> (value, std, n, sampling seeds) or None when absent; a swept
                                   # metric: a list of (value, std, n, sampling seeds, cfg scale), one per scale
    description: str
    sampled: bool = False          # a metric of generated samples: its rows carry the CFG scale


def _dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _recon(key):
    return lambda e: None if e.get(key) is None else (e[key], None, e.get("rfid_n"), None)


def _sampled(*path, n="gfid_n"):
    def get(e):
        d = _dig(e, *path)
        if d is None:
            return None
        seeds = _dig(e, "gfid", "seeds")
        return d["mean"], d.get("std"), e.get(n), " ".join(map(str, seeds)) if seeds else None
    return get


def _swept(key):
    """One row per scale of the guidance sweep (bench/study/guidance.py), or None without a sweep."""
    def get(e):
        g = e.get("guidance")
        if not g:
            return None
        seeds = " ".join(map(str, g["seeds"]))
        return [(row[key]["mean"], row[key]["std"], g["n"], seeds, row["scale"]) for row in g["per_scale"]]
    return get


def _structure(key, side="dmvae"):
    return lambda e: None if _dig(e, "structure", side, key) is None else (
        e["structure"][side][key], None, _dig(e, "structure", side, "n"), None)


def _matching(which, stat):
    return lambda e: None if _dig(e, "matching", which, stat) is None else (
        e["matching"][which][stat], None, None, None)


def _flag(*path):
    return lambda e: None if _dig(e, *path) is None else (float(bool(_dig(e, *path))), None, None, None)


METRICS = [
    Metric("rfid", False, _recon("rfid"), "rFID-N of the tokenizer's reconstructions of N held-out images"),
    Metric("psnr", True, _recon("psnr"), "mean per-image PSNR of the reconstructions (dB)"),
    Metric("ssim", True, _recon("ssim"), "mean SSIM of the reconstructions"),
    Metric("gfid", False, _sampled("gfid"), "gFID-N; std over the sampling seeds", sampled=True),
    Metric("kid", False, _sampled("kid"), "KID on the gFID samples; std over the sampling seeds", sampled=True),
    Metric("precision", True, _sampled("precision_recall", "precision"), "precision (k = 3) of the gFID samples",
           sampled=True),
    Metric("recall", True, _sampled("precision_recall", "recall"), "recall (k = 3) of the gFID samples",
           sampled=True),
    *[Metric(f"{key}_cfg", better, _swept(key), f"{label} of the guidance sweep (eval.cfg_scales) at the row's "
             f"cfg_scale, Table 1's samples otherwise; std over the sampling seeds", sampled=True)
      for key, better, label in (("gfid", False, "gFID-N"), ("precision", True, "precision (k = 3)"),
                                 ("recall", True, "recall (k = 3)"))],
    Metric("knn_accuracy", True, _structure("knn_accuracy"), "kNN class accuracy of the DMVAE latents"),
    Metric("linear_probe_accuracy", True, _structure("linear_probe_accuracy"),
           "linear-probe class accuracy of the DMVAE latents"),
    Metric("silhouette", True, _structure("silhouette"), "class silhouette of the DMVAE latents"),
    *[Metric(f"{key}_reference", None, _structure(key, "reference"),
             f"{label} of p_r's own draws (a property of the prior, not a score of the run)")
      for key, label in (("knn_accuracy", "kNN class accuracy"), ("linear_probe_accuracy", "linear-probe accuracy"),
                         ("silhouette", "class silhouette"))],
    *[Metric(f"{stat}_{which}", None if which in ("floor", "before") else False, _matching(which, stat),
             f"{stat} of the {label} against p_r")
      for which, label in (("before", "start encoder's latents"), ("after", "final encoder's latents"),
                           ("floor", "second p_r draw (the statistic's floor)"),
                           ("teacher_samples", "teacher S_real's samples"))
      for stat in ("mmd2", "sliced_w2", "c2st_acc")],
    Metric("reached_prior", True, _flag("matching", "reached"), "1 if q(z) reached p_r by the matching rule"),
    Metric("generator_converged", True, _flag("converged", "converged"),
           "1 if the generator met the convergence rule"),
]
METRIC_INDEX = {m.name: m for m in METRICS}


def metric_directions() -> dict:
    """Every metric's direction and meaning, as results.json records them (meta.metrics)."""
    return {m.name: {"higher_is_better": m.higher_is_better, "description": m.description} for m in METRICS}


def tidy(results: dict, run: str = ".") -> pd.DataFrame:
    """The tidy rows of one results.json dict (its finished training seeds)."""
    from reports.results import ablation_tag

    meta, ablation = results.get("meta", {}), ablation_tag(results)
    table1_scale = (meta.get("config") or {}).get("eval", {}).get("cfg_scale")  # the scale Table 1 sampled at
    rows = []
    for prior, entry in results.get("priors", {}).items():
        for seed, e in sorted((entry.get("per_training_seed") or {}).items(), key=lambda kv: int(kv[0])):
            if e.get("status", "ok") != "ok":
                continue
            for m in METRICS:
                got = m.get(e)
                if got is None:
                    continue
                for value, std, n, seeds, scale in (got if isinstance(got, list) else
                                                    [(*got, table1_scale if m.sampled else None)]):
                    rows.append([run, ablation, prior, int(seed), m.name, float(value),
                                 None if std is None else float(std), n, seeds,
                                 None if scale is None else float(scale), m.higher_is_better,
                                 meta.get("config_hash"), meta.get("git_commit")])
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"training_seed": "int64", "value": "float64", "std": "float64", "n": "Int64",
                         "cfg_scale": "float64"})


SWEPT = tuple(m.name for m in METRICS if m.name.endswith("_cfg"))  # one row per scale: grouped by scale too


def _spreads(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.groupby(by, sort=False).agg(
        mean=("value", "mean"), training_std=("value", "std"), sampling_std=("std", "mean"),
        seeds=("training_seed", "nunique"))


def summary(results: dict) -> pd.DataFrame:
    """Per (prior, metric), over the finished training seeds: `mean`, `training_std` (sample std, ddof 1;
    NaN with one seed), `sampling_std` (mean of the seeds' sampling stds, where the metric has one) and
    `seeds` (how many). Table 1 is built from this frame (reports/tables.py); the guidance sweep's
    metrics are left out (guidance_summary keeps their scales apart)."""
    frame = tidy(results)
    return _spreads(frame[~frame.metric.isin(SWEPT)], ["prior", "metric"])


def guidance_summary(results: dict) -> pd.DataFrame:
    """summary() of the guidance sweep's metrics, per (prior, metric, cfg_scale); empty without a sweep."""
    frame = tidy(results)
    return _spreads(frame[frame.metric.isin(SWEPT)], ["prior", "metric", "cfg_scale"])


def load_results(*dirs) -> pd.DataFrame:
    """One tidy frame from study folders: each folder's results.json and its ablations' (ablate/KEY=V/)."""
    from reports.results import load_study  # reads and checks the schema, with clear errors

    frames = []
    for d in dirs:
        study = load_study(Path(d))
        if study.results is not None:
            frames.append(tidy(study.results, str(d)))
        for res in study.ablations.values():
            frames.append(tidy(res, str(d)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def write_csv(results: dict, path: Path) -> Path:
    """<out>/results.csv: the tidy rows of a results dict (run = the folder itself, '.')."""
    from bench.io import atomic_write_bytes

    atomic_write_bytes(Path(path), tidy(results).to_csv(index=False).encode("utf-8"))
    return Path(path)
