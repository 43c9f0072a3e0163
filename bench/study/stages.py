"""Content-addressed stage outputs: <out>/stages/<prior>/<stage>-<key>/, finished stages are skipped.

A stage's key hashes its config, the keys of the stages it reads and STAGE_VERSION, so a changed
setting gives a new folder and an unchanged one finds the finished output. A folder holds
  output.safetensors + output.json   the tensors (state dicts), bench/checkpoint.py
  record.json                        what was measured; written LAST: its presence means "finished"
  resume.*                           the training loop's periodic checkpoint while it runs
A kill at any moment leaves either a finished folder or one that resumes from its last checkpoint.
`force` names stages to recompute: a forced stage and every stage after it in the same prior.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench import distributed as D
from bench.cache import content_key
from bench.checkpoint import load_state, save_state
from bench.io import atomic_write_json

STAGE_VERSION = 1  # bump when what a stage computes changes
ORDER = ("prior", "teacher", "start", "dmvae", "generator", "evaluate")  # the vae row: dmvae = KL baseline


def stage_key(stage: str, *parts) -> str:
    return content_key("study-stage", stage, STAGE_VERSION, *parts)


class StageStore:
    """Finished stage outputs of one study folder."""

    def __init__(self, out: Path, force: tuple[str, ...] = ()):
        self.root = Path(out) / "stages"
        self.force = set(force)
        self.recomputed: set[tuple[str, str]] = set()  # (prior, stage) forced in this run

    def dir(self, prior: str, stage: str, key: str) -> Path:
        return self.root / prior.replace(":", "_") / f"{stage}-{key}"

    def forced(self, prior: str, stage: str) -> bool:
        """Is this stage, or one before it in this prior, named by --force?"""
        upto = ORDER[:ORDER.index(stage) + 1]
        return "all" in self.force or any(s in self.force for s in upto)

    def load(self, prior: str, stage: str, key: str, tensors: bool = True) -> tuple[dict, dict] | None:
        """(state, record) of a finished stage, or None (missing, damaged or forced in this run)."""
        d = self.dir(prior, stage, key)
        if self.forced(prior, stage) and (prior, stage) not in self.recomputed:
            return None
        try:
            record = json.loads((d / "record.json").read_text())
        except (OSError, ValueError):
            return None
        if not tensors or not (d / "output.json").exists():
            return {}, record
        state = load_state(d / "output")
        return None if state is None else (state, record)

    def resume_path(self, prior: str, stage: str, key: str, collective: bool = True) -> Path:
        """The training loop's checkpoint stem; a forced stage starts from scratch."""
        d = self.dir(prior, stage, key)
        if self.forced(prior, stage) and (prior, stage) not in self.recomputed and D.rank() == 0:
            shutil.rmtree(d, ignore_errors=True)
        if collective:
            D.barrier()
        return d / "resume"

    def save(self, prior: str, stage: str, key: str, state: dict | None, record: dict,
             collective: bool = True) -> None:
        """Write the outputs, then record.json (rank 0), and drop the resume checkpoint.

        collective=False: called by rank 0 alone (evaluation), so no barrier.
        """
        d = self.dir(prior, stage, key)
        self.recomputed.add((prior, stage))
        if D.rank() == 0:
            d.mkdir(parents=True, exist_ok=True)
            if state is not None:
                save_state(d / "output", state)
            atomic_write_json(d / "record.json", {**record, "key": key, "stage": stage,
                                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for f in d.glob("resume.*"):
                f.unlink(missing_ok=True)
        if collective:
            D.barrier()
