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
    out = {k: v for k, v in first.items() if k not in (*SCALARS, "gfid", "kid", "matching", "converged")}
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
    return out


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
