"""run_study(cfg, priors, out): every prior through pipeline.py, results.json written after every stage.

results.json (SCHEMA_VERSION):
  meta: config (resolved) + config_hash, preset and command line, git commit, package versions, device, world size, seeds,
        ablation {key, value} of an --ablate sweep's run (null otherwise), metrics {name: higher_is_better, description},
        data {source: the files read and how, skipped_files: image files that could not be decoded},
        weights hashes (Inception; each prior's provenance holds its own), feature source per prior,
        every evaluation setting, stage keys per training seed, floors {fid_real_vs_real}, wall time
  priors.<name>: status ("ok" | "pending" | "running" | "failed") and reason;
        per_training_seed {seed: rfid, psnr, ssim, gfid {mean, std over sampling seeds}, kid, precision_recall,
            convergence [{epoch, gfid}], converged {converged, rule}, matching {before, after, floor,
            teacher_samples, reached, rule}, dm_curve, structure, generator_norm, timings, ...,
            guidance (only with eval.cfg_scales: bench/study/guidance.py) {scales, table1_scale, n, seeds,
            per_scale [{scale, gfid, precision, recall {mean, std}, per_seed, per_class_fid [per class]}],
            per_class {seed, names, n, n_ref, n_floor, floor [per class]}}};
        the aggregate over training seeds (aggregate.py): rfid, psnr, ssim (means), spread {metric: std},
        gfid {mean, std, spread, training_std, sampling_std, n, seeds, training_seeds}, kid, converged {all},
        matching {reached_all, before/after/floor/teacher_samples means}, timings {stage: own seconds, summed},
        guidance (when a seed has it) {per_scale [{scale, gfid/precision/recall {mean, std, ...}, per_class_fid}]},
        and the first seed's structure, convergence, figure_data {tsne, recon_grid, sample_grid} (files)
results.csv beside it: the same numbers as tidy rows, one per (prior, training seed, metric) (reports/data.py).
A failure (NaN/Inf in training, missing weights, any crash) in one prior marks it failed with the
reason and the others go on; no number that was not measured is written.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path


from bench import distributed as D
from bench.cache import Cache
from bench.config import config_hash, neutral_keys, to_dict
from bench.data import DataSpec, dataset_fingerprint, load_dataset
from bench.errors import UserError
from bench.io import atomic_write_json, atomic_write_png, environment, written_under
from bench.metrics import fid, standard
from bench.study import evaluate as E
from bench.study import guidance as G
from bench.study.aggregate import finish_prior
from reports.data import metric_directions, write_csv
from bench.study.config import StudyConfig
from bench.study.pipeline import PriorRun, run_prior
from bench.study.stages import StageStore

SCHEMA_VERSION = 3  # 2: training seeds (per_training_seed + aggregate), matching, floors; 3: meta.ablation, meta.metrics


@dataclass
class Context:
    """What every prior of a run shares: config, data, caches, the stage store and the results."""

    cfg: StudyConfig
    out: Path
    cache: Cache
    store: StageStore
    results: dict
    log: callable = print
    started: float = field(default_factory=time.time)

    @cached_property
    def data(self):
        c = self.cfg
        return load_dataset(DataSpec(c.dataset, c.resolution, root=c.data_root, limit=c.limit, seed=c.seed,
                                     cache_dir=str(self.cache.root), store=c.image_store, workers=c.data_workers))

    @cached_property
    def data_fp(self) -> str:
        return dataset_fingerprint(self.data)

    @cached_property
    def held_out(self):
        split = getattr(self.data, self.cfg.eval.ref_split)
        return E.held_out(split, self.cfg.eval.ref_n, self.cfg.seed)

    @cached_property
    def structure_images(self):
        split = getattr(self.data, self.cfg.eval.ref_split)
        return E.held_out(split, min(self.cfg.eval.structure_n, len(split)), self.cfg.seed + 1)

    def matching_images(self, n: int):
        """A fixed class-balanced subset of n held-out images for the matching statistics and probes."""
        split = getattr(self.data, self.cfg.eval.ref_split)
        return E.held_out(split, min(n, len(split)), self.cfg.seed + 2)

    @cached_property
    def floor_images(self):
        """N = gfid_n class-balanced real train images: the floor of gFID-N (and, per class, of per-class FID)."""
        return E.held_out(self.data.train, min(self.cfg.eval.gfid_n, len(self.data.train)), self.cfg.seed + 3)

    @cached_property
    def floor_features(self):
        """Inception features of floor_images (cached by content, like the reference)."""
        return fid.reference(self.floor_images[0], self.cache, self.cfg.eval.batch)["features"]

    @cached_property
    def generation_reference(self) -> dict:
        """What gFID, KID and precision/recall read against: the held-out images' statistics, or the ADM
        reference batch eval.reference_batch (bench/metrics/standard.py study_reference)."""
        path = self.cfg.eval.reference_batch
        return self.reference if not path else standard.study_reference(path, self.cache)

    @cached_property
    def floors(self) -> dict | None:
        """FID between N real train images and the held-out reference: what gFID-N reads for perfect samples."""
        ev = self.cfg.eval
        if D.rank() != 0:
            return None
        x, feats = self.floor_images[0], self.floor_features
        ref, external = self.generation_reference, bool(ev.reference_batch)
        return {"fid_real_vs_real": {"value": fid.fid_against_reference(feats, ref), "n": len(x),
                                     "images": "class-balanced train images vs " + (
                                         f"the reference batch {ev.reference_batch}" if external else
                                         "the held-out reference statistics"),
                                     "compare_with": f"gFID-{ev.gfid_n} (same N); rFID uses N = {ev.ref_n}"}}

    @cached_property
    def reference(self) -> dict:
        """Inception statistics of the held-out images (cached by content)."""
        return fid.reference(self.held_out[0], self.cache, self.cfg.eval.batch)

    def on_stage(self, prior: str, stage: str, seconds, cached: bool) -> None:
        entry = self.results["priors"][prior]
        if seconds is not None:
            entry["timings"][stage] = seconds
        if cached:
            entry["cached"].append(stage)
        else:
            self.log(f"[{prior}] {stage}: done in {seconds:.1f} s")
        self.write()

    def write(self) -> None:
        if D.rank() == 0:
            self.results["meta"]["wall_s"] = time.time() - self.started
            atomic_write_json(self.out / "results.json", self.results)
            write_csv(self.results, self.out / "results.csv")  # the same numbers as tidy rows (reports/data.py)


def _meta(cfg: StudyConfig, priors: list[str], cache: Cache, command: dict, ablation: str | None = None) -> dict:
    env = environment()
    key, _, value = (ablation or "").partition("=")
    return {"schema_version": SCHEMA_VERSION, "config": to_dict(cfg), "config_hash": config_hash(cfg),
            "config_neutral": neutral_keys(cfg), **command,
            "ablation": {"key": key, "value": value} if ablation else None, "metrics": metric_directions(),
            "timings": "own seconds per stage, without the upstream stages computed inside it",
            "priors_requested": priors, "git_commit": env.pop("git_commit"), **env,
            "world_size": D.world_size(),
            "seeds": {"study": cfg.seed, "teacher": cfg.teacher.seed, "pretrain": cfg.pretrain.seed,
                      "dmvae": cfg.dmvae.seed, "generator": cfg.generator.seed, "sampling": list(cfg.eval.seeds)},
            "weights": {"inception": fid.inception.weights_record(cache)},
            "evaluation": {**E.settings(cfg.eval, cache),
                           **({"guidance": G.settings(cfg.eval)} if cfg.eval.cfg_scales else {})},
            "feature_source": {}, "provenance": {}, "stage_keys": {}}


def _previous(out: Path, cfg_hash: str) -> dict:
    """Entries of an earlier run on the same folder and config (kept for priors not run now)."""
    try:
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return old.get("priors", {}) if old.get("meta", {}).get("config_hash") == cfg_hash else {}


def run_study(cfg: StudyConfig, priors: list[str], out: Path, force: tuple[str, ...] = (),
              cache: Cache | None = None, log=print, store_root: Path | None = None,
              preset: str | None = None, ablation: str | None = None) -> dict:
    """Run (or resume) the study; returns the results dict also written to <out>/results.json.

    Stage outputs go under <store_root or out>/stages (ablations share one store).
    """
    D.init()
    log = log if D.rank() == 0 else (lambda *a, **k: None)
    cache = cache or Cache()
    kept = {n: r for n, r in _previous(out, config_hash(cfg)).items() if n not in priors}
    command = {"preset": preset, "command": " ".join(["run_all.py", *sys.argv[1:]])}
    results = {"meta": _meta(cfg, priors, cache, command, ablation), "priors": {**{n: {"status": "pending"} for n in priors}, **kept}}
    ctx = Context(cfg, out, cache, StageStore(store_root or out, force), results, log)
    ctx.data  # noqa: B018  (a bad data path fails here, once, for every prior)
    results["meta"]["data"] = {"source": ctx.data.source, "skipped_files": list(ctx.data.skipped)}
    if ctx.floors is not None:  # real vs real FID at the gFID's N: the statistic's floor
        results["meta"]["floors"] = ctx.floors
        ctx.write()
    for name in priors:
        entry = results["priors"][name] = {"status": "running", "timings": {}, "cached": [], "per_training_seed": {}}
        t0 = time.time()
        for s in cfg.training_seeds:
            log(f"\n=== prior {name}, training seed {s} ===")
            try:
                run = PriorRun(name, ctx, s)
                results["meta"]["stage_keys"].setdefault(name, {})[str(s)] = run.keys
                record, tsne = run_prior(run, ctx)
                if not entry["per_training_seed"]:  # figures show the first finished training seed
                    _write_figure_data(out / "figure_data", name, tsne)
                prov = run.provenance()
                results["meta"]["provenance"][name] = prov
                results["meta"]["feature_source"][name] = prov.get("feature_source", "analytic")
                entry["per_training_seed"][str(s)] = {**_prior_entry(run, record), "timings": run.timings(),
                                                      "throughput_img_per_s": run.throughput(), "models": run.models(),
                                                      "compute": run.compute()}
            except Exception as e:  # one prior's (or seed's) failure must not lose the others
                if isinstance(e, OSError) and written_under(e, out, store_root or out):
                    raise  # the output folder failed, not the prior: bench/cli.py says what was kept
                expected = isinstance(e, (UserError, RuntimeError, FloatingPointError))  # clear messages already
                reason = str(e) if expected else f"{type(e).__name__}: {e}"
                entry.setdefault("failed_training_seeds", {})[str(s)] = reason
                if not expected:
                    entry.setdefault("traceback", {})[str(s)] = traceback.format_exc()
                print(f"[{name} seed {s}] FAILED{f' on rank {D.rank()}' if D.world_size() > 1 else ''}: {reason}",
                      flush=True)
            ctx.write()
        finish_prior(entry)
        entry["wall_s"] = time.time() - t0
        ctx.write()
    D.barrier()
    log("\n" + summary(results))
    return results


def _prior_entry(run: PriorRun, record: dict) -> dict:
    """One training seed's block of the contract, from the evaluation record (and the DM stage's history)."""
    hist = record["tokenizer"]
    entry = {"status": "ok", "training_seed": run.tseed, "rfid": record["rfid"], "rfid_n": record["rfid_n"],
             "psnr": record["psnr"], "ssim": record["ssim"], "gfid": record["gfid"], "gfid_n": record["gfid"]["n"],
             "kid": record["kid"], "precision_recall": record["precision_recall"],
             "gfid_per_seed": record["per_seed"], "convergence": record["convergence"],
             "convergence_n": record["convergence_n"], "converged": record["converged"],
             "structure": record["structure"], "matching": record["matching"],
             "dm_curve": hist.get("curve"), "generator_norm": record["generator_norm"],
             "encoder_start": hist.get("start"), "loss_terms": hist.get("loss_terms"),
             "regulariser": hist.get("regulariser"), "tokenizer_updates": hist.get("tokenizer_updates"),
             "figure_data": _figure_files(run.name)}
    if record.get("guidance"):  # the CFG sweep (eval.cfg_scales, bench/study/guidance.py)
        entry["guidance"] = record["guidance"]
    E.finite_or_raise(entry, f"priors.{run.name}")
    return entry


def _figure_files(name: str) -> dict:
    """The figure data files of one prior, relative to the study folder (reports/ reads them)."""
    safe = name.replace(":", "_")
    return {"tsne": f"figure_data/tsne_{safe}.json", "recon_grid": f"figure_data/recon_{safe}.png",
            "sample_grid": f"figure_data/samples_{safe}.png"}


def _write_figure_data(folder: Path, name: str, data: dict) -> None:
    """t-SNE coordinates and labels of reference and DMVAE latents (paper Fig. 4) as JSON, and the
    reconstruction / sample grids as PNG, for the report (which must not need torch)."""
    if D.rank() != 0:
        return
    files = _figure_files(name)
    atomic_write_json(folder.parent / files["tsne"], {k: v.tolist() for k, v in data.items() if "grid" not in k})
    for key in ("recon_grid", "sample_grid"):
        if key in data:
            atomic_write_png(folder.parent / files[key], data[key].numpy())


def summary(results: dict) -> str:
    """A plain-text table of the headline numbers."""
    lines = [f"{'prior':<10} {'status':<8} {'rFID':>8} {'PSNR':>6} {'gFID (mean +- std)':>22} {'q(z) -> p_r':>15}"]
    for name, r in results["priors"].items():
        if r.get("status") != "ok":
            lines.append(f"{name:<10} {r.get('status', '?'):<8} {r.get('reason', '')}")
            continue
        g, m = r["gfid"], r.get("matching")
        after = ("reached" if m["reached_all"] else "NOT reached") if m else "-"
        lines.append(f"{name:<10} ok       {r['rfid']:8.2f} {r['psnr']:6.2f} "
                     f"{g['mean']:12.2f} +- {g['std']:6.2f} {after:>15}"
                     f"   (gFID-{g['n']}, std over {g['spread']})")
    return "\n".join(lines)
