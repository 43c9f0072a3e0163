"""`run_all.py priors --check`: build each prior and show it is what it claims.

Each prior's claims live with the prior (`Prior.checks`); this module builds the priors on one
dataset, runs the claims, times the builds, and prints one summary. A prior that fails to build
is reported and the others go on.
"""
from __future__ import annotations

import time
import traceback

import torch

from bench.cache import Cache
from bench.errors import UserError
from priors.base import PriorSettings
from priors.registry import get_prior


def run_checks(names: list[str], settings: PriorSettings, data, cache: Cache, log=print) -> dict:
    """{name: {"status", "build_s", "checks": [...], "provenance": {...}}} for each prior."""
    report = {}
    for name in names:
        cls = get_prior(name)
        t0 = time.perf_counter()
        log(f"[{name}] building ({settings.features} features, size {settings.feature_size})")
        try:
            prior = cls(settings, data).build(cache)
            build_s = time.perf_counter() - t0
            rows = prior.checks(torch.Generator().manual_seed(settings.seed))
            report[name] = {"status": "ok" if all(r["passed"] for r in rows) else "check failed",
                            "build_s": build_s, "checks": rows, "provenance": prior.provenance()}
        except UserError as e:
            report[name] = {"status": "failed", "reason": str(e), "build_s": time.perf_counter() - t0}
        except Exception as e:  # one prior's crash must not lose the others' results
            report[name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(), "build_s": time.perf_counter() - t0}
        log(summary_lines({name: report[name]}))
    return report


def summary_lines(report: dict) -> str:
    """A plain-text table: prior, claim, measured value, expected, pass/FAIL."""
    lines = []
    for name, r in report.items():
        src = r.get("provenance", {}).get("feature_source", "analytic")
        lines.append(f"{name:<9} {r['status']:<12} build {r['build_s']:7.1f} s  features: {src}")
        for c in r.get("checks", []):
            mark = "pass" if c["passed"] else "FAIL"
            lines.append(f"    {mark}  {c['claim']:<64} {c['value']:>9.4f}  (expected {c['expected']})")
        if "reason" in r:
            lines.append(f"    {r['reason']}")
        if r.get("provenance", {}).get("fallback"):
            lines.append(f"    warning: {r['provenance']['fallback']}")
    return "\n".join(lines)
