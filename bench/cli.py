"""Command line of run_all.py: the study (default), `toy2d`, `report`, `priors`, `sample`, `score`.

    python run_all.py --priors gaussian,text,resnet,dino,noise [--preset cpu] [--out DIR]
    python run_all.py toy2d [--out DIR] [--target s_curve] [--objectives dm,real_score]
    python run_all.py report DIR
    python run_all.py priors [--check]
    python run_all.py sample RUN_DIR --prior NAME --num-samples N --out SAMPLES.npz [--training-seed S]
    python run_all.py score SAMPLES.npz REF.npz [--json OUT.json] [--inception-weights PATH]

Bad input ends with one paragraph on stderr (exit code 2), never a bare traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from bench.errors import UserError, unknown

COMMANDS = ("toy2d", "report", "priors", "sample", "score")

EPILOG = """sub-commands:
  (none)   the prior study: one DMVAE per prior, rFID / gFID / convergence / t-SNE, reports
  toy2d    the paper's 2D toy (Fig. 3) with every objective measured (run_all.py toy2d --help)
  report   re-render a report from an output folder's results.json
  priors   list the reference priors (--check verifies each one)
  sample   N samples of a finished run's generator as an ADM .npz (torchrun-distributed, resumable)
  score    score a samples .npz against a reference .npz (ADM layout): FID, sFID, precision/recall, IS
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return {"toy2d": _toy2d, "report": _report, "priors": _priors, "sample": _sample,
                    "score": _score}[argv[0]](argv[1:])
        if argv and not argv[0].startswith("-"):
            raise unknown("sub-command", argv[0], COMMANDS)
        return _study(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept in the output folder", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one paragraph) instead of printing usage and exiting."""

    def error(self, message):
        raise UserError(f"{message}. Run '{self.prog} --help' for the options.")


def _study(argv) -> int:
    from bench.study.config import STUDY_PRESETS
    from bench.study.stages import ORDER

    p = _Parser(prog="run_all.py", description="DMVAE latent-prior benchmark: trains one DMVAE "
                "per reference prior and compares reconstruction and generation.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--priors", help="comma-separated prior names or module:Class (see 'run_all.py priors'; "
                   "default: the paper's gaussian,text,resnet,dino,noise); the same as --set priors=...")
    p.add_argument("--preset", default="cpu", help=f"one of: {', '.join(STUDY_PRESETS)}")
    p.add_argument("--out", default="runs/study", help="output folder")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--config", help="JSON file of settings (nested objects for the stage configs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, dotted for stage configs: --set dmvae.lr=1e-4 (repeatable)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help=f"recompute a stage and the stages after it: one of {', '.join(ORDER)}, all")
    p.add_argument("--ablate", metavar="KEY=V1,V2",
                   help="run the study once per value of one setting (shared stage outputs), into "
                        "<out>/ablate/KEY=V/")
    _add_prior_args(p, size=False, defaults=False)
    g = p.add_argument_group("cluster", "one job per prior and training seed, merged afterwards (bench/launch.py)")
    g.add_argument("--launcher", choices=("none", "submitit"), default="none",
                   help="submitit: submit one job per prior x training seed (SLURM, or local processes)")
    g.add_argument("--slurm-cluster", default="auto", help="auto (SLURM when found) | slurm | local")
    g.add_argument("--slurm-partition", help="SLURM partition")
    g.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job (its ranks)")
    g.add_argument("--slurm-time", type=int, default=24 * 60, help="minutes per job (preempted or out of "
                   "time: requeued, and it resumes)")
    g.add_argument("--slurm-mem", type=int, help="GB of memory per job")
    g.add_argument("--slurm-cpus", type=int, help="CPUs per task")
    args = p.parse_args(argv)
    from bench.config import resolve, to_dict
    from bench.study.config import StudyConfig

    if args.preset not in STUDY_PRESETS:
        raise unknown("preset", args.preset, STUDY_PRESETS)
    if args.priors is not None and not _split(args.priors):
        raise UserError("--priors is empty; name at least one prior (see 'run_all.py priors').")
    for stage in args.force:
        if stage not in (*ORDER, "all"):
            raise unknown("stage", stage, (*ORDER, "all"))
    extra = {"priors": args.priors, "dataset": args.dataset, "data_root": args.data_root, "resolution": args.resolution,
             "limit": args.limit, "features": args.features, "weights_dir": args.weights_dir, "seed": args.seed}
    runs = [(None, args.set)]
    if args.ablate:
        key, _, values = args.ablate.partition("=")
        if not key or not _split(values):
            raise UserError(f"--ablate '{args.ablate}' is not of the form KEY=V1,V2; for example "
                            f"--ablate dmvae.dm_weight=1,10.")
        runs = [(f"{key}={v}", [*args.set, f"{key}={v}"]) for v in _split(values)]
    if args.ablate and args.ablate.partition("=")[0].strip() == "priors":
        raise UserError("--ablate priors=... is not an ablation: every prior is already a row of Table 1. Give the "
                        "priors with --priors and ablate a setting, e.g. --ablate dmvae.dm_weight=1,10.")
    cfgs = [(tag, _unique_priors(resolve(StudyConfig, STUDY_PRESETS, args.preset, args.config, sets, extra=extra)))
            for tag, sets in runs]
    priors = list(cfgs[0][1].priors)
    if args.dry_run:
        import json
        shown = {tag or "config": to_dict(cfg) for tag, cfg in cfgs}
        print(json.dumps(shown["config"] if len(shown) == 1 else shown, indent=2))
        return 0
    if args.launcher == "submitit":
        return _launch(args, priors, cfgs)
    if args.preset == "paper":
        print("note: the paper preset needs ImageNet-256 (--data-root) and an accelerator cluster; it is "
              "not trainable on a CPU machine.")
    from bench import distributed as D
    from bench.cache import Cache
    from bench.study.runner import run_study, summary

    D.init()
    for tag, cfg in cfgs:  # training must not depend on the world size: equal shards of every batch
        uneven = {f"{st}.batch": b for st in ("teacher", "pretrain", "dmvae", "generator")
                  if (b := getattr(cfg, st).batch) % D.world_size()}
        if uneven:
            raise UserError(f"With {D.world_size()} processes every training batch must split evenly, but "
                            f"{', '.join(f'{k}={v}' for k, v in uneven.items())} does not"
                            f"{f' (ablation {tag})' if tag else ''}. Choose a process count that divides the "
                            f"batches, or set them with --set, e.g. --set dmvae.batch=32.")
    out = _writable(Path(args.out))
    cache = Cache(_writable_cache(args.cache_dir))
    failed = 0
    with _locked(out, hold=D.rank() == 0):
        for tag, cfg in cfgs:
            run_out = out / "ablate" / tag if tag else out
            results = run_study(cfg, priors, run_out, tuple(args.force), cache, store_root=out,
                                preset=args.preset, ablation=tag)
            failed += sum(r.get("status") != "ok" for n, r in results["priors"].items() if n in priors)
            if tag:
                print(f"\n--- ablation {tag} ---\n" + summary(results))
        if D.rank() == 0:
            _write_report(out)
    return 1 if failed else 0


@contextlib.contextmanager
def _locked(out: Path, hold: bool = True):
    """Hold out/.run.lock (when `hold`) around a run; the folder turning unwritable is one paragraph."""
    from bench.io import written_under
    from bench.runlock import RunLock

    lock = RunLock(out) if hold else None
    try:
        with (lock or contextlib.nullcontext()):
            yield
    except OSError as e:
        if not written_under(e, out):
            raise
        raise UserError(_unwritable_message(out, e, lock)) from None
    if lock is not None and lock.release_error is not None:
        print(f"warning: the lock file '{lock.path}' could not be removed ({lock.release_error.strerror}); "
              f"remove it if no run is active.", file=sys.stderr)


def _unwritable_message(out: Path, e: OSError, lock) -> str:
    """What went wrong, what was kept, how to resume, and what became of the lock."""
    what = f"{e.strerror or e} on '{e.filename}'" if e.filename else str(e.strerror or e)
    if lock is None:
        held = ""
    elif lock.release_error is None:
        held = " The run's lock was removed."
    else:
        held = (f" Its lock file '{lock.path}' could not be removed ({lock.release_error.strerror}); "
                f"delete it once the folder is writable, if no run is active (a new run on this host also "
                f"takes it over, as its process is gone).")
    return (f"The output folder '{out}' became unwritable during the run ({what}). What was written "
            f"before is kept: finished stages under '{out / 'stages'}' and results.json as of its last "
            f"complete write (files are replaced atomically, so none is half-written). Make the folder "
            f"writable (or free space) and run the same command again: it resumes from the finished "
            f"stages.{held}")


def _toy2d(argv) -> int:
    from bench.config import resolve, to_dict
    from bench.toy2d.objectives import OBJECTIVES
    from bench.toy2d.run import TOY_PRESETS, ToyConfig, run_toy
    from bench.toy2d.targets import TARGETS

    p = _Parser(prog="run_all.py toy2d", description=(
        "The paper's 2D toy (Fig. 3): 1536 points uniform in [-1.5, 1.5]^2 are moved towards a "
        "target by each objective, with the same budget, and scored against fresh target samples "
        "(sliced-W2, energy distance, coverage, share outside the support). Writes toy2d.json "
        "and toy2d.png."))
    p.add_argument("--out", default="runs/toy2d", help="output folder (default runs/toy2d)")
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(TOY_PRESETS)}")
    p.add_argument("--target", help=f"one of: {', '.join(TARGETS)}, or module:function")
    p.add_argument("--objectives", help=f"comma-separated subset of: {', '.join(OBJECTIVES)}")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="JSON file of settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting (repeatable); --dry-run lists them")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    cfg = resolve(ToyConfig, TOY_PRESETS, args.preset, args.config, args.set,
                  extra={"target": args.target, "objectives": args.objectives, "seed": args.seed})
    from bench.toy2d.objectives import check_objectives
    from bench.toy2d.targets import get_target
    check_objectives(cfg.objectives)
    get_target(cfg.target)
    if args.dry_run:
        import json
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    out = _writable(Path(args.out))
    result = run_toy(cfg, out)
    failed = [k for k, v in result["objectives"].items() if v.get("status") != "ok"]
    return 1 if failed and len(failed) == len(result["objectives"]) else 0


def _launch(args, priors: list[str], cfgs) -> int:
    """--launcher submitit: the same study as one job per prior and training seed (bench/launch.py)."""
    from bench.launch import JobSettings, launch

    if args.ablate:
        raise UserError("--launcher submitit does not take --ablate; launch one sweep per value with "
                        "--set KEY=V and merge them with 'run_all.py report OUT RUN_DIR ...'.")
    base = ["--preset", args.preset, *(["--config", args.config] if args.config else [])]
    sets = [s for s in args.set if s.split("=", 1)[0].strip() != "priors"]  # each job names its own prior
    base += [a for s in sets for a in ("--set", s)] + [a for f in args.force for a in ("--force", f)]
    for flag in ("dataset", "data_root", "resolution", "limit", "features", "weights_dir", "cache_dir", "seed"):
        if getattr(args, flag) is not None:
            base += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    settings = JobSettings(cluster=args.slurm_cluster, partition=args.slurm_partition, gpus=args.slurm_gpus,
                           time_min=args.slurm_time, mem_gb=args.slurm_mem, cpus_per_task=args.slurm_cpus)
    out = _writable(Path(args.out))
    _writable_cache(args.cache_dir)  # the jobs write there too
    with _locked(out):
        return launch(base, priors, cfgs[0][1].training_seeds, out, settings)


def _report(argv) -> int:
    p = _Parser(prog="run_all.py report", description="Re-render report.md and report.html from "
                "an output folder's results.json (and its ablate/ and toy2d/ subfolders), without "
                "recomputing anything and without torch. With run folders after it, first merge them into "
                "that folder: training seeds of the same prior and config are pooled, differing configs are "
                "shown side by side (reports/merge.py).")
    p.add_argument("dir", help="the --out folder of a study run; or, with RUN_DIRs, the merged report's folder")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="study run folders to merge into DIR")
    args = p.parse_args(argv)
    from reports import build_report

    if args.runs:
        from reports.merge import write_merged

        print(f"merged: {write_merged(Path(args.dir), [Path(r) for r in args.runs])}")
    md, page = build_report(Path(args.dir))
    print(f"report: {md}\nreport: {page}")
    return 0


def _sample(argv) -> int:
    p = _Parser(prog="run_all.py sample", description=(
        "Write N samples of a finished study run's generator (EMA weights, decoded by its DMVAE decoder) as an "
        "ADM-layout .npz (arr_0 uint8 (N, H, W, 3), arr_1 labels) for run_all.py score or guided-diffusion's "
        "evaluator (under torchrun the ranks share the work). Labels are class-balanced and each sample's noise depends only on its index, so the file "
        "does not depend on the number of processes (torchrun) or on resuming: a killed job resumes from its "
        "finished chunks (bench/study/sample.py)."))
    p.add_argument("run_dir", help="the --out folder of a finished study run")
    p.add_argument("--prior", required=True, help="which prior's generator")
    p.add_argument("--num-samples", "-n", dest="n", type=int, required=True,
                   help="number of samples (50000 for the standard protocol)")
    p.add_argument("--out", required=True, help="the .npz to write (chunks go to OUT.parts/ meanwhile)")
    p.add_argument("--training-seed", type=int, default=0, help="which training seed's generator (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0: the study's first gFID seed)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the run's eval.cfg_scale)")
    p.add_argument("--steps", type=int, help="Euler ODE steps (default: the run's eval.sample_steps)")
    p.add_argument("--batch", type=int, help="sampling batch per process (default: the run's eval.batch, which gives "
                   "the study's own gFID samples bit for bit; another batch size changes pixels only by float "
                   "rounding)")
    p.add_argument("--cache-dir", help="the cache the run used (default $DMVAE_CACHE, else ~/.cache/dmvae-bench)")
    args = p.parse_args(argv)
    from bench.cache import Cache
    from bench.study.sample import sample_run

    try:
        _probe(Path(args.out).resolve().parent)
    except OSError as e:
        raise UserError(f"Cannot write the samples file '{args.out}' ({e.strerror}); pass a path in a writable "
                        f"folder with --out.") from None
    too_small = [f"--{k} {v}" for k, v in (("batch", args.batch), ("steps", args.steps)) if v is not None and v < 1]
    if too_small or (args.cfg_scale is not None and not args.cfg_scale >= 0):
        raise UserError(f"Bad sampling setting ({', '.join(too_small) or f'--cfg-scale {args.cfg_scale}'}): --batch and "
                        f"--steps must be at least 1 and --cfg-scale a number >= 0 (1: no guidance).")
    sample_run(Path(args.run_dir), args.prior, args.n, Path(args.out), args.training_seed, args.seed,
               args.cfg_scale, args.steps, args.batch, Cache(_writable_cache(args.cache_dir)))
    return 0


def _score(argv) -> int:
    p = _Parser(prog="run_all.py score", description=(
        "Score a samples .npz against a reference .npz, both in the ADM layout of openai/guided-diffusion's "
        "evaluator (arr_0 = uint8 images (N, H, W, 3); a reference may also hold mu/sigma and mu_s/sigma_s): "
        "FID (against the stored mu/sigma when present, else the reference images), sFID, precision/recall "
        "(k = 3) against the reference images, and the Inception Score when Inception weights with the "
        "classifier layer are available; otherwise it is reported as not measured, with the reason."))
    p.add_argument("samples", help="samples .npz (arr_0: uint8 (N, H, W, 3))")
    p.add_argument("reference", help="reference .npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--json", help="also write the result (every metric with its settings) to this JSON file")
    p.add_argument("--inception-weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (with "
                   "the classifier) for the Inception Score; default: the torch hub cache, if it is there")
    p.add_argument("--cache-dir", help="content-addressed cache for the Inception weights and the reference "
                                       "features (default $DMVAE_CACHE, else ~/.cache/dmvae-bench)")
    args = p.parse_args(argv)
    from bench.cache import Cache
    from bench.io import atomic_write_json
    from bench.metrics.standard import score, table

    if args.json:
        try:
            _probe(Path(args.json).parent)
        except OSError as e:
            raise UserError(f"Cannot write the JSON file '{args.json}' ({e.strerror}); pass a path in a "
                            f"writable folder with --json.") from None
    result = score(args.samples, args.reference, args.inception_weights, Cache(_writable_cache(args.cache_dir)))
    print(table(result))
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"json: {args.json}")
    return 0


def _write_report(out: Path) -> None:
    """The study's last step: a failure here is reported, and results.json stays as written."""
    from reports import build_report

    try:
        md, page = build_report(out)
        print(f"\nreport: {md}\nreport: {page}")
    except UserError as e:
        print(f"warning: the report was not written: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001  (results are on disk; re-render with `run_all.py report`)
        print(f"warning: the report was not written ({type(e).__name__}: {e}); results.json is complete, "
              f"re-render with 'python run_all.py report {out}'.", file=sys.stderr)


def _add_prior_args(p, size: bool = True, defaults: bool = True) -> None:
    """Data and feature-source options shared by the study and `priors --check`.

    defaults=False leaves unset options at None, so a study preset's own values stand.
    """
    from bench.data import DATASETS

    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--dataset", default=d("fashion-mnist"), help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-root", help="folder holding the dataset's files (overrides defaults)")
    p.add_argument("--resolution", type=int, default=d(32), help="image side in pixels")
    p.add_argument("--limit", type=int, help="cap on images per split (class-balanced)")
    p.add_argument("--features", default=d("auto"), choices=("auto", "pretrained", "local"),
                   help="feature networks: the paper's pretrained ones, ones trained here, or "
                        "pretrained when their weights are found (default)")
    p.add_argument("--weights-dir", help="folder with pretrained weights files (see README)")
    if size:
        p.add_argument("--feature-size", "--size", dest="feature_size", default="cpu", choices=("smoke", "cpu", "gpu"),
                       help="training budget of the locally trained feature networks (the study's feature_size)")
    p.add_argument("--cache-dir", help="content-addressed cache, dataset downloads in its data/ "
                                       "(default $DMVAE_CACHE, else ~/.cache/dmvae-bench)")
    p.add_argument("--seed", type=int, default=d(0))


def _priors(argv) -> int:
    import priors
    from priors.registry import get_prior

    p = _Parser(prog="run_all.py priors", description="List the reference priors; with --check, "
                "build each one on a dataset and show it is what it claims (moments, kNN class "
                "accuracy of its features, class subsets, noise level).")
    p.add_argument("--check", action="store_true", help="build and verify the priors")
    p.add_argument("--priors", help="comma-separated subset (default: all registered)")
    p.add_argument("--json", help="also write the check report to this JSON file")
    p.add_argument("--image-store", default="memory", choices=("memory", "memmap"),
                   help="where the images live: memory (float32), or memmap (imagefolder: decoded once into a "
                        "uint8 file in the cache, as the study's image_store setting)")
    _add_prior_args(p)
    args = p.parse_args(argv)
    names = _split(args.priors) if args.priors else priors.available()
    classes = [get_prior(n) for n in names]
    if not args.check:
        for cls in classes:
            i = cls.info
            cond = "class-conditional" if i.class_conditional else "unconditional"
            print(f"{i.name:<9} v{i.version}  paper row {i.paper_row:<12} {cond:<17} {i.description}")
        return 0
    from bench.cache import Cache
    from bench.data import DataSpec, load_dataset
    from bench.io import atomic_write_json
    from priors.base import PriorSettings
    from priors.check import run_checks, summary_lines

    cache = Cache(_writable_cache(args.cache_dir))
    data = load_dataset(DataSpec(args.dataset, args.resolution, root=args.data_root,
                                 limit=args.limit, seed=args.seed, cache_dir=str(cache.root),
                                 store=args.image_store))
    settings = PriorSettings(features=args.features, weights_dir=args.weights_dir,
                             feature_size=args.feature_size, seed=args.seed)
    report = run_checks(names, settings, data, cache)
    print("\nSummary (" + data.source + ")\n" + summary_lines(report))
    if args.json:
        atomic_write_json(Path(args.json), {"data_source": data.source, "data_skipped_files": list(data.skipped),
                                            "priors": report})
    return 0 if all(r["status"] == "ok" for r in report.values()) else 1


def _unique_priors(cfg):
    """A prior named twice runs once: the repeat is dropped with a note."""
    import dataclasses

    unique = tuple(dict.fromkeys(cfg.priors))
    if unique != cfg.priors:
        dup = sorted({n for n in cfg.priors if cfg.priors.count(n) > 1})
        print(f"note: {', '.join(dup)} named more than once in the priors; each runs once.", file=sys.stderr)
        cfg = dataclasses.replace(cfg, priors=unique)
    return cfg


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _writable(out: Path) -> Path:
    """Create the output folder or explain why it cannot be written."""
    try:
        _probe(out)
    except OSError as e:
        raise UserError(f"Cannot write to the output folder '{out}' ({e.strerror}). Pass a "
                        f"writable folder with --out DIR.") from None
    return out


def _writable_cache(cache_dir: str | None) -> Path:
    """The cache root (--cache-dir, else $DMVAE_CACHE, else the default), created, or why it cannot be."""
    from bench.cache import default_root

    root = Path(cache_dir) if cache_dir else default_root()
    given = ("given by --cache-dir" if cache_dir else
             "given by $DMVAE_CACHE" if os.environ.get("DMVAE_CACHE") else "the default cache folder")
    try:
        _probe(root)
    except OSError as e:
        raise UserError(f"Cannot write to the cache folder '{root}' ({given}): {e.strerror}. The cache holds "
                        f"feature networks, latents, Inception statistics and downloaded datasets; pass a "
                        f"writable folder with --cache-dir DIR or set $DMVAE_CACHE to one.") from None
    return root


def _probe(folder: Path) -> None:
    """Create the folder and a file in it (OSError when either fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
    probe.write_text("")
    probe.unlink()
