"""Reading a study folder: results.json, its ablations and the toy, checked before anything is drawn.

    <out>/results.json              the study (bench/study/runner.py writes it after every stage)
    <out>/ablate/KEY=V/results.json  one study per value of an --ablate sweep
    <out>/figure_data/...            t-SNE coordinates (JSON) and image grids (PNG) per prior
    <out>/toy2d/toy2d.json (+ .png)  the 2D toy, when `run_all.py toy2d --out <out>/toy2d` ran
No torch here: a report is rendered from files alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import UserError

SCHEMA_VERSION = 3  # the results.json schema the runner writes (bench/study/runner.py SCHEMA_VERSION)
# 3: meta.ablation {key, value} (or null) and meta.metrics {name: direction, description} are in the file.
# Version 2 files are upgraded on reading (upgrade()), the one place that knows the older layout.
READABLE = (2, 3)


@dataclass
class Study:
    out: Path
    results: dict | None                                   # the main run (None: an ablation-only folder)
    ablations: dict[str, dict] = field(default_factory=dict)  # "KEY=V" -> results
    toy: dict | None = None
    notes: list[str] = field(default_factory=list)          # what could not be read, said in the report

    @property
    def runs(self) -> list[dict]:
        return [r for r in (self.results, *self.ablations.values()) if r is not None]

    @property
    def meta(self) -> dict:
        return self.runs[0]["meta"]


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"Cannot read {what} {path}: {e.strerror}. Check the path and its permissions.") from None
    except ValueError as e:
        raise UserError(f"{what.capitalize()} {path} is not valid JSON ({e}). It was probably cut short by a "
                        f"crash while being copied; re-run the study on that folder (finished stages are "
                        f"kept) to rewrite it.") from None


def check_schema(res: dict, path: Path) -> dict:
    """A results.json this renderer understands, or a clear error."""
    meta = res.get("meta") if isinstance(res, dict) else None
    if not isinstance(meta, dict) or "priors" not in res:
        raise UserError(f"{path} is not a study results.json (no 'meta' and 'priors' blocks). Point "
                        f"'run_all.py report' at the output folder of 'run_all.py --priors ...'.")
    version = meta.get("schema_version")
    if version not in READABLE:
        raise UserError(f"{path} has results schema version {version!r}, but this report renderer reads "
                        f"versions {', '.join(map(str, READABLE))} (it writes {SCHEMA_VERSION}). Render it with the "
                        f"suite version that wrote it (its commit is {meta.get('git_commit', 'unknown')}), or re-run "
                        f"the study with this version (finished stages are reused where their configs match).")
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("eval"), dict):
        # the evaluation settings (N, sampling seeds, reference split) say what every number means, and a
        # merge compares them: without them nothing can be shown or merged honestly
        raise UserError(f"{path} has no meta.config block with its 'eval' settings (the resolved study "
                        f"configuration), so its numbers cannot be labelled with the N and seeds they were "
                        f"measured at, nor compared with other runs. It was written by an older or edited "
                        f"runner: re-run the study on that folder with this version to rewrite results.json "
                        f"(finished stages are reused where their configs match).")
    return upgrade(res, path) if version < SCHEMA_VERSION else res


def ablation_tag(results: dict) -> str:
    """'KEY=VALUE' of a run of an --ablate sweep (meta.ablation), or ''."""
    a = results.get("meta", {}).get("ablation")
    return f"{a['key']}={a['value']}" if a else ""


def upgrade(res: dict, path: Path) -> dict:
    """A version-2 results dict in the version-3 layout.

    Version 2 kept the ablation only in the folder name (<out>/ablate/KEY=V/results.json) and the
    metric directions only in the code; both are filled in here, from the same sources. Version-2
    files written before stage times were recorded as each stage's own time (no meta.timings) are
    refused: their times include upstream stages and cannot be shown as own times.
    """
    from reports.data import metric_directions

    meta = res["meta"]
    if "timings" not in meta:
        raise UserError(f"{path} records INCLUSIVE stage times (it was written before each stage's own time "
                        f"was recorded; commit {meta.get('git_commit', 'unknown')}), which this renderer does not "
                        f"show. Render it with the suite version that wrote it, or re-run the study on that folder "
                        f"with this version (finished stages are reused; their records keep their times).")
    tag = Path(path).parent.name if Path(path).parent.parent.name == "ablate" else None
    key, _, value = (tag or "").partition("=")
    res = {**res, "meta": {**meta, "schema_version": SCHEMA_VERSION, "upgraded_from": meta["schema_version"],
                           "ablation": {"key": key, "value": value} if tag else None,
                           "metrics": metric_directions()}}
    return res


def load_study(out: Path) -> Study:
    """Everything a report shows, from an output folder."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"'{out}' is not a folder. Give 'run_all.py report' the --out folder of a study run "
                        f"(it holds results.json).")
    main = out / "results.json"
    results = check_schema(read_json(main, "results file"), main) if main.exists() else None
    ablations = {}
    for path in sorted((out / "ablate").glob("*/results.json")):
        res = check_schema(read_json(path, "ablation results file"), path)
        ablations[ablation_tag(res) or path.parent.name] = res
    if results is None and not ablations:
        raise UserError(f"No results.json in '{out}' (nor under {out / 'ablate'}). Run the study first, "
                        f"for example 'python run_all.py --preset smoke --out {out}', or point "
                        f"'run_all.py report' at the folder given to --out.")
    study = Study(out, results, ablations)
    toy = out / "toy2d" / "toy2d.json"
    if toy.exists():
        try:
            study.toy = read_json(toy, "toy2d results")
        except UserError as e:
            study.notes.append(f"The 2D toy is left out: {e}")
    return study


def figure_file(study: Study, rel: str | None) -> Path | None:
    """A figure data file of the study folder, or None when it is missing."""
    if not rel:
        return None
    path = study.out / rel
    return path if path.is_file() else None
