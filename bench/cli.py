"""Command line of run_all.py: the study (default), `toy2d`, `report`, `priors`.

    python run_all.py --priors gaussian,text,resnet,dino,noise [--preset cpu] [--out DIR]
    python run_all.py toy2d [--out DIR] [--target s_curve] [--objectives dm,real_score]
    python run_all.py report DIR
    python run_all.py priors [--check]

Bad input ends with one paragraph on stderr (exit code 2), never a bare traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import UserError, unknown

COMMANDS = ("toy2d", "report", "priors")

# The study's prior names (METHOD.md section 4). The registry that builds them is issue #3.
PLANNED_PRIORS = ("gaussian", "gmm", "text", "resnet", "dino", "subdino", "noise", "vae")

EPILOG = """sub-commands:
  (none)   the prior study: one DMVAE per prior, rFID / gFID / convergence / t-SNE, reports
  toy2d    the paper's 2D toy (Fig. 3) with every objective measured (run_all.py toy2d --help)
  report   re-render a report from an output folder's results.json
  priors   list the reference priors (--check verifies each one)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return {"toy2d": _toy2d, "report": _report, "priors": _priors}[argv[0]](argv[1:])
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
    p = _Parser(prog="run_all.py", description="DMVAE latent-prior benchmark: trains one DMVAE "
                "per reference prior and compares reconstruction and generation.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--priors", default="gaussian,text,resnet,dino,noise",
                   help="comma-separated prior names (see 'run_all.py priors')")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | gpu | paper")
    p.add_argument("--out", default="runs/study", help="output folder")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    priors = [s.strip() for s in args.priors.split(",") if s.strip()]
    for name in priors:
        if name not in PLANNED_PRIORS and ":" not in name:
            raise unknown("prior", name, PLANNED_PRIORS)
    print("The prior study is not built yet: the reference priors (issue #3) and the DMVAE "
          "runner with rFID/gFID/t-SNE and reports (issues #4, #5) are still open, so no study "
          f"metric is computed for {', '.join(priors)}.")
    if args.dry_run:
        return 0
    print("What exists now is the distribution-matching core; running its 2D toy benchmark "
          "(run_all.py toy2d) instead.\n")
    return _toy2d(["--out", str(Path(args.out) / "toy2d")])


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


def _report(argv) -> int:
    p = _Parser(prog="run_all.py report", description="Re-render report.md and report.html from "
                "an output folder's results.json, without recomputing anything.")
    p.add_argument("dir")
    p.parse_args(argv)
    raise UserError("The report renderer is not built yet (issue #5); results.json files are "
                    "not produced until the study runner (issue #4) exists.")


def _priors(argv) -> int:
    p = _Parser(prog="run_all.py priors", description="List the reference priors.")
    p.add_argument("--check", action="store_true", help="verify every prior is what it claims")
    p.parse_args(argv)
    print("Reference priors of the study (METHOD.md section 4); their registry and builders are "
          "issue #3 and not built yet:")
    for name in PLANNED_PRIORS:
        print(f"  {name}")
    return 0


def _writable(out: Path) -> Path:
    """Create the output folder or explain why it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"Cannot write to the output folder '{out}' ({e.strerror}). Pass a "
                        f"writable folder with --out DIR.") from None
    return out
