"""One study from several run folders: rows computed on different machines or days, put in one Table 1.

    run_all.py report OUT_DIR RUN_DIR [RUN_DIR ...]

Rules:
- The runs must share their evaluation settings (the held-out reference set, N, sampling seeds and
  sampler, the Inception weights): FIDs measured otherwise do not compare, so merging stops with
  one paragraph naming the setting and the runs.
- A prior's training seeds from runs whose resolved config agrees (training seeds and the prior list
  aside) are pooled
  into one row and aggregated as one run would (bench/study/aggregate.py).
- A run with a guidance sweep (eval.cfg_scales) and one without pool too: the sweep is an extra stage
  after the evaluation and Table 1 is computed the same way in both; the sweep is pooled per scale over
  the training seeds that ran it.
- Runs of a prior whose configs differ in anything else are shown side by side, each row labelled
  by the settings that differ ("gaussian [dmvae.steps=3000]"), never pooled.
- A training seed present in two runs of one config is the same computation: the first run's is kept.
The merged folder gets results.json (schema as a run's, plus meta.merged_from), results.csv and the
figure data of each row, so `run_all.py report OUT_DIR` renders it again later. No torch here.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

from bench.config import drop_keys
from bench.errors import UserError
from bench.io import atomic_write_json
from bench.study.aggregate import finish_prior
from reports.results import check_schema, read_json

# Settings whose difference makes two FIDs incomparable (dotted paths into meta.config / meta).
EVAL_CONFIG_KEYS = ("dataset", "resolution", "limit", "seed", "eval.ref_split", "eval.ref_n", "eval.gfid_n",
                    "eval.seeds", "eval.convergence_n", "eval.sample_steps", "eval.cfg_scale", "eval.shift",
                    "eval.reference_batch", "eval.match_n", "eval.structure_n")
EVAL_META_KEYS = ("weights.inception.sha256",)


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


# Settings that say which rows a run computed, or what it computed beyond Table 1, not how it computed them:
# runs that differ only in these pool. eval.cfg_scales (the guidance sweep) adds a stage after the evaluation
# and leaves Table 1 (at eval.cfg_scale) as it is, so a run with a sweep pools with one without; the sweep
# itself is pooled per scale over the training seeds that ran it (bench/study/aggregate.py).
ROW_KEYS = ("training_seeds", "priors", "eval.cfg_scales")


def _compared(meta: dict) -> dict:
    """The config as merged runs compare it: without the settings a later version added that are at
    their neutral default (meta.config_neutral, bench/config.py added_later), so a run written before
    a setting existed pools with one written after, as long as the setting is left at that default;
    and without the settings that are never hashed (not_hashed: experiment logging), whatever their value."""
    return drop_keys(meta["config"], meta.get("config_neutral") or [])


def _group_key(config: dict) -> str:
    """The config's hash with ROW_KEYS left out: runs that differ only there pool."""
    rest = drop_keys(config, list(ROW_KEYS))
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_comparable(runs: list[tuple[Path, dict]]) -> None:
    first_dir, first = runs[0]
    for d, res in runs[1:]:
        for key in EVAL_CONFIG_KEYS:
            a, b = _get(first["meta"]["config"], key), _get(res["meta"]["config"], key)
            if a != b:
                raise UserError(f"Cannot merge '{first_dir}' and '{d}': they were evaluated with different "
                                f"{key} ({a!r} against {b!r}), so their FIDs and other statistics do not compare. "
                                f"Merge only runs with the same evaluation settings, or re-run one of them with "
                                f"--set {key}={json.dumps(a) if not isinstance(a, str) else a} (finished "
                                f"training stages are reused).")
        for key in EVAL_META_KEYS:
            a, b = _get(first["meta"], key), _get(res["meta"], key)
            if a != b:
                raise UserError(f"Cannot merge '{first_dir}' and '{d}': they used different Inception weights "
                                f"({key} {a!r} against {b!r}), so their FIDs do not compare. Re-run one of "
                                f"them with the same weights.")


def _labels(groups: dict[str, dict]) -> dict[str, str]:
    """A short label per config group: the settings in which the groups differ."""
    if len(groups) == 1:
        return {k: "" for k in groups}
    flats = {k: _flat(drop_keys(cfg, list(ROW_KEYS))) for k, cfg in groups.items()}
    keys = sorted({key for f in flats.values() for key in f})
    differ = [key for key in keys if len({json.dumps(f.get(key), sort_keys=True) for f in flats.values()}) > 1]
    return {k: ", ".join(f"{key}={f.get(key)}" for key in differ) for k, f in flats.items()}


def _merge_sweeps(meta: dict, metas: list[dict]) -> None:
    """The merged meta's guidance sweep: every scale some run swept (eval.cfg_scales) and the first sweep's
    settings (meta.evaluation.guidance) with those scales; nothing when no run swept."""
    scales = sorted({w for m in metas for w in _get(m["config"], "eval.cfg_scales") or []})
    sweeps = [m["evaluation"]["guidance"] for m in metas if (m.get("evaluation") or {}).get("guidance")]
    if not scales or not sweeps:
        return
    meta["config"]["eval"]["cfg_scales"] = scales
    meta["config_neutral"] = [k for k in meta.get("config_neutral") or [] if k != "eval.cfg_scales"]
    meta.setdefault("evaluation", {})["guidance"] = {**sweeps[0], "scales": scales}


def merge_runs(dirs: list[Path]) -> tuple[dict, dict[str, tuple[Path, dict]]]:
    """The merged results dict, and per merged row the run folder and figure files it shows."""
    if not dirs:
        raise UserError("Give at least one run folder to merge: run_all.py report OUT_DIR RUN_DIR [RUN_DIR ...].")
    runs = []
    for d in map(Path, dirs):
        path = d / "results.json"
        if not path.is_file():
            raise UserError(f"'{d}' has no results.json. Give 'run_all.py report OUT_DIR RUN_DIR ...' the --out "
                            f"folders of study runs.")
        runs.append((d, check_schema(read_json(path, "results file"), path)))
    _check_comparable(runs)
    configs = {}
    for _, res in runs:
        configs.setdefault(_group_key(_compared(res["meta"])), _compared(res["meta"]))
    labels = _labels(configs)
    priors: dict[str, dict] = {}
    sources: dict[str, tuple[Path, dict]] = {}
    notes, order = [], []
    for d, res in runs:
        label = labels[_group_key(_compared(res["meta"]))]
        for name, entry in res["priors"].items():
            row = f"{name} [{label}]" if label else name
            if row not in order:
                order.append(row)
            m = priors.setdefault(row, {"status": "running", "timings": {}, "cached": [], "per_training_seed": {},
                                        "merged_from": []})
            m["merged_from"].append(str(d))
            for s, e in (entry.get("per_training_seed") or {}).items():
                if s in m["per_training_seed"]:
                    notes.append(f"{row}: training seed {s} is in several runs; the one from "
                                 f"'{m['per_training_seed'][s]['_run']}' is kept.")
                    continue
                m["per_training_seed"][s] = {**copy.deepcopy(e), "_run": str(d)}
                if row not in sources:  # the figures show the first training seed found, as a run does
                    sources[row] = (d, e.get("figure_data") or entry.get("figure_data") or {})
            for s, why in (entry.get("failed_training_seeds") or {}).items():
                if s not in m["per_training_seed"]:
                    m.setdefault("failed_training_seeds", {})[s] = why
            if entry.get("status") == "failed" and not entry.get("per_training_seed"):
                m.setdefault("failed_training_seeds", {}).setdefault("?", entry.get("reason", "failed"))
    for row, m in priors.items():
        for e in m["per_training_seed"].values():
            e.pop("_run")
        failed = m.get("failed_training_seeds", {})
        for s in list(failed):
            if s in m["per_training_seed"]:
                del failed[s]
        finish_prior(m)
    meta = copy.deepcopy(runs[0][1]["meta"])
    seeds = sorted({int(s) for m in priors.values() for s in m["per_training_seed"]})
    meta["config"]["training_seeds"] = seeds or meta["config"].get("training_seeds")
    if "priors" in meta["config"]:  # configs written since the prior list joined the config
        meta["config"]["priors"] = list(dict.fromkeys(n for _, r in runs for n in r["priors"]))
    _merge_sweeps(meta, [r["meta"] for _, r in runs])
    meta.update(priors_requested=order, wall_s=sum(r["meta"].get("wall_s") or 0 for _, r in runs),
                merged_from=[{"dir": str(d), "config_hash": r["meta"].get("config_hash"),
                              "git_commit": r["meta"].get("git_commit"), "priors": sorted(r["priors"]),
                              "training_seeds": r["meta"]["config"].get("training_seeds"),
                              "label": labels[_group_key(_compared(r["meta"]))]} for d, r in runs],
                merge_notes=notes, command=" ".join(["run_all.py report", "OUT", *map(str, dirs)]))
    for key in ("provenance", "feature_source", "stage_keys"):
        merged = {}
        for d, r in runs:
            label = labels[_group_key(_compared(r["meta"]))]
            for name, v in (r["meta"].get(key) or {}).items():
                merged.setdefault(f"{name} [{label}]" if label else name, v)
        meta[key] = merged
    if len(configs) > 1:
        meta["config_hash"] = "mixed: " + ", ".join(sorted({r["meta"].get("config_hash") for _, r in runs}))
    return {"meta": meta, "priors": {row: priors[row] for row in order}}, sources


def write_merged(out: Path, dirs: list[Path]) -> Path:
    """Merge the runs into `out` (results.json, results.csv, figure_data); returns results.json's path."""
    from reports.data import write_csv

    out = Path(out)
    if any(out.resolve() == Path(d).resolve() for d in dirs):
        raise UserError(f"The merged report's folder '{out}' is one of the runs being merged; give it a folder "
                        f"of its own (it gets results.json, results.csv and the report).")
    results, sources = merge_runs(dirs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for row, (src, files) in sources.items():
            safe = row.replace(":", "_").replace(" ", "_").replace("[", "").replace("]", "").replace("=", "-") \
                .replace(",", "").replace("/", "_")
            mine = {}
            for kind, rel in files.items():
                if not rel or not (src / rel).is_file():
                    continue
                dst = Path("figure_data") / f"{Path(rel).stem.split('_', 1)[0]}_{safe}{Path(rel).suffix}"
                (out / dst.parent).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, out / dst)
                mine[kind] = str(dst)
            results["priors"][row]["figure_data"] = mine
        atomic_write_json(out / "results.json", results)
        write_csv(results, out / "results.csv")
    except OSError as e:
        raise UserError(f"Cannot write the merged study into '{out}' ({e.strerror}). Give a writable folder.") \
            from None
    return out / "results.json"
