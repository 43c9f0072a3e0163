"""Content-addressed stage outputs: <out>/stages/<prior>/<stage>-<key>/, finished stages are skipped.

A stage's key hashes its config, the keys of the stages it reads and STAGE_VERSION, so a changed
setting gives a new folder and an unchanged one finds the finished output. A folder holds
  output.safetensors + output.json   the tensors (state dicts), bench/checkpoint.py
  record.json                        what was measured; written LAST: its presence means "finished".
                                     It holds record_sha256, the sha256 of its own canonical JSON
                                     (record_digest); a record that does not match (edited or damaged)
                                     is treated as missing and the stage recomputed, as damaged tensors are
  resume.*                           the training loop's periodic checkpoint while it runs
A kill at any moment leaves either a finished folder or one that resumes from its last checkpoint.
`force` names stages to recompute: a forced stage and every stage after it in the same prior.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

from bench import distributed as D
from bench.cache import content_key
from bench.checkpoint import load_state, save_state
from bench.io import atomic_write_json

STAGE_VERSION = 1  # bump when what a stage computes changes
ORDER = ("prior", "teacher", "start", "dmvae", "generator", "evaluate", "guidance")  # the vae row: dmvae = KL
# baseline; guidance: the CFG sweep, only when eval.cfg_scales names scales


def stage_key(stage: str, *parts) -> str:
    return content_key("study-stage", stage, STAGE_VERSION, *parts)


def record_digest(record: dict) -> str:
    """sha256 of a record's canonical JSON (sorted keys, no whitespace), its own checksum field left out."""
    body = json.dumps({k: v for k, v in record.items() if k != "record_sha256"}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(body.encode()).hexdigest()


def read_record(path: Path) -> dict | None:
    """A stage's record.json, or None when missing, unreadable or not matching its checksum (with a warning).

    Records written before the checksum existed have no record_sha256: they are accepted unverified, so
    the stage folders of earlier runs still load (they were not checked then either).
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if "record_sha256" in record and record["record_sha256"] != record_digest(record):
        warnings.warn(f"stage record {path} does not match its checksum (edited or damaged); "
                      f"recomputing the stage", stacklevel=2)
        return None
    record.pop("record_sha256", None)
    return record


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
        record = read_record(d / "record.json")
        if record is None:
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
            record = json.loads(json.dumps({**record, "key": key, "stage": stage,  # as it will read back
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, allow_nan=False))
            atomic_write_json(d / "record.json", {**record, "record_sha256": record_digest(record)})
            for f in d.glob("resume.*"):
                f.unlink(missing_ok=True)
        if collective:
            D.barrier()


class PriorStages:
    """Load-or-compute for the stages of one prior and training seed, with each stage's own time.

    `run(stage, compute)` loads a finished stage or computes it: compute(resume_path) -> (state, record).
    `lazy(stage, compute, load)` is the same, deferred to the first call and remembered, returning
    load(state, record). Stages read each other lazily, so computing one may compute or load the ones
    it reads: its recorded `seconds` is its OWN time (the time of the stages computed or loaded inside it
    subtracted). `on_stage(prior, stage, seconds, cached)` is called after each.
    """

    def __init__(self, store: StageStore, prior: str, keys: dict[str, str], on_stage, owners: dict | None = None):
        self.store, self.prior, self.keys, self.on_stage = store, prior, keys, on_stage
        self.owners = owners or {}   # stage -> folder owner, when not the prior's own (the shared plain AE)
        self._nested = 0.0           # seconds spent in stages computed or loaded inside the current one

    def owner(self, stage: str) -> str:
        return self.owners.get(stage, self.prior)

    def record(self, stage: str) -> dict | None:
        """A finished stage's record (no tensors loaded), or None."""
        hit = self.store.load(self.owner(stage), stage, self.keys[stage], tensors=False)
        return None if hit is None else hit[1]

    def run(self, stage: str, compute, collective: bool = True) -> tuple[dict, dict]:
        """(state, record) of the stage, loaded or computed.

        Training stages are collective (every rank trains, rank 0 writes); collective=False is for work
        rank 0 does alone (evaluation).
        """
        from bench.study.evaluate import finite_or_raise

        owner, key = self.owner(stage), self.keys[stage]
        t0 = time.time()
        hit = self.store.load(owner, stage, key)
        if hit is not None:
            self._nested += time.time() - t0  # loading a finished stage is not the caller's own work either
            self.on_stage(self.prior, stage, hit[1].get("seconds"), cached=True)
            return hit
        outer, self._nested = self._nested, 0.0
        try:
            state, record = compute(self.store.resume_path(owner, stage, key, collective))
            record = {**record, "seconds": time.time() - t0 - self._nested}
        finally:
            self._nested = outer + (time.time() - t0)
        finite_or_raise(record, f"{stage} record")
        self.store.save(owner, stage, key, state, record, collective)
        self.on_stage(self.prior, stage, record["seconds"], cached=False)
        return state, record

    def lazy(self, stage: str, compute, load, collective: bool = True):
        """A function returning load(*run(stage, compute)), computed on its first call and remembered."""
        memo = []

        def get():
            if not memo:
                memo.append(load(*self.run(stage, compute, collective)))
            return memo[0]
        return get
