"""One prior's row from its training seeds: mean and spread over seeds, the sampling spread kept apart.

A training seed is a full re-training of everything downstream of the prior (teacher, encoder
start, DM stage, generator); the sampling seeds only redraw the generator's noise. Comparisons
between priors are judged by the training-seed spread (reports/tables.py); with a single training
seed the row says so and only the sampling spread exists.
"""
from __future__ import annotations

import numpy as np

SCALARS = ("rfid", "psnr", "ssim")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def aggregate(per_seed: dict[str, dict]) -> dict:
    """The prior's row from {training seed: that seed's entry} (seeds whose run finished)."""
    seeds = sorted(per_seed, key=int)
    rows = [per_seed[s] for s in seeds]
    first = rows[0]
    out = {k: v for k, v in first.items() if k not in (*SCALARS, "gfid", "kid", "matching", "converged", "guidance")}
    spread = {}
    for k in SCALARS:
        out[k], spread[k] = _mean_std([r[k] for r in rows])
    g_mean, g_train = _mean_std([r["gfid"]["mean"] for r in rows])
    g_sampling = float(np.mean([r["gfid"]["std"] for r in rows]))
    out["gfid"] = {"mean": g_mean, "std": g_train if g_train is not None else g_sampling,
                   "spread": "training seeds" if g_train is not None else "sampling seeds (one training seed)",
                   "training_std": g_train, "sampling_std": g_sampling, "n": first["gfid"]["n"],
                   "seeds": first["gfid"]["seeds"], "training_seeds": [int(s) for s in seeds]}
    out["kid"] = {**first["kid"], "mean": float(np.mean([r["kid"]["mean"] for r in rows]))}
    out["spread"] = {**spread, "gfid": g_train, "over": "training seeds (sample std, ddof 1)",
                     "training_seeds": [int(s) for s in seeds]}
    conv = [r["converged"] for r in rows]
    out["converged"] = {"all": all(c.get("converged") for c in conv), "rule": conv[0]["rule"],
                        "per_training_seed": {s: c.get("converged") for s, c in zip(seeds, conv)}}
    if first.get("matching"):
        m = [r["matching"] for r in rows]
        out["matching"] = {"reached_all": all(x["reached"] for x in m), "rule": m[0]["rule"],
                           "per_training_seed": {s: x["reached"] for s, x in zip(seeds, m)},
                           **{k: {stat: float(np.mean([x[k][stat] for x in m])) for stat in ("mmd2", "sliced_w2",
                                                                                         "c2st_acc")}
                              for k in ("before", "after", "floor", "teacher_samples")},
                           "mean_over": "training seeds"}
    else:
        out["matching"] = None
    guidance = aggregate_guidance({s: r["guidance"] for s, r in zip(seeds, rows) if r.get("guidance")})
    if guidance:
        out["guidance"] = guidance
    return out


def _pooled(values: list[float], sampling_stds: list[float]) -> dict:
    """A per-training-seed mean pooled as Table 1's gFID is: the std over training seeds, or with one
    seed the sampling std."""
    mean, train = _mean_std(values)
    sampling = float(np.mean(sampling_stds))
    return {"mean": mean, "std": train if train is not None else sampling,
            "spread": "training seeds" if train is not None else "sampling seeds (one training seed)",
            "training_std": train, "sampling_std": sampling}


def _mean_per_class(per_seed: list[list]) -> list:
    """Per class, the mean over training seeds (None where a seed has no value for the class)."""
    return [None if any(v is None for v in vals) else float(np.mean(vals)) for vals in zip(*per_seed)]


def aggregate_guidance(sweeps: dict[str, dict]) -> dict | None:
    """The guidance sweep (bench/study/guidance.py) pooled over {training seed: its sweep}, the seeds that ran
    one: per scale, over the seeds that swept that scale (merged runs may have swept different scales).
    The per-class counts and floors are the first seed's (real images: the same for every training seed)."""
    if not sweeps:
        return None
    seeds = sorted(sweeps, key=int)
    first = sweeps[seeds[0]]
    per_scale = []
    for w in sorted({row["scale"] for g in sweeps.values() for row in g["per_scale"]}):
        at = {s: row for s in seeds for row in sweeps[s]["per_scale"] if row["scale"] == w}
        rows = list(at.values())
        per_scale.append({"scale": w, **{m: _pooled([r[m]["mean"] for r in rows], [r[m]["std"] for r in rows])
                                         for m in ("gfid", "precision", "recall")},
                          "per_class_fid": _mean_per_class([r["per_class_fid"] for r in rows]),
                          "training_seeds": [int(s) for s in at]})
    return {"scales": [r["scale"] for r in per_scale], "table1_scale": first["table1_scale"], "n": first["n"],
            "seeds": first["seeds"], "k": first["k"], "per_scale": per_scale, "per_class": first["per_class"],
            "training_seeds": [int(s) for s in seeds], "over": "training seeds (sample std, ddof 1); with one "
                                                                "training seed the std is over the sampling seeds"}


def finish_prior(entry: dict) -> None:
    """Status and the aggregate over the training seeds that finished (bench/study/aggregate.py)."""
    done, failed = entry["per_training_seed"], entry.get("failed_training_seeds", {})
    if not done:
        entry.update(status="failed", reason="; ".join(f"training seed {s}: {r}" for s, r in failed.items()))
        return
    timings: dict = {}
    for s, e in done.items():
        for stage, sec in e["timings"].items():  # the prior itself is shared by the seeds: counted once
            timings[stage] = sec if stage == "prior" else timings.get(stage, 0.0) + sec
    entry.update(aggregate(done), status="ok", timings=timings)
    if failed:
        entry["note"] = f"training seeds {', '.join(failed)} failed; the row aggregates the others"
