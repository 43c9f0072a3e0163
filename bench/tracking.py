"""Experiment logging of the training stages: TensorBoard event files and, when asked, Weights & Biases.

Settings: the study's `log` section (`--set log.tensorboard=true`, `--set log.wandb=PROJECT`,
`--set log.every=10`). It changes no number, so it never enters the config hash, the stage keys or the
comparison of merged runs (bench/config.py not_hashed). Each training stage computed in this run
(teacher, start, dmvae, generator) gets one `Tracker`, which its loop calls through two things:

    with track.session(first, steps, batch):           # opens the sinks (rank 0), closes them at the end
        for step in range(first, steps):
            ...
            track.step(step + 1, loss=..., lr=..., grad_norm=...)   # numbers, 0-dim tensors or dicts of them

Every `log.every` steps (and at the last) each scalar is written as its mean over the steps since the
previous point (a value missing on some steps, such as the DM stage's tokenizer terms, is averaged over
the steps that had it), plus `img_per_s` over that stretch. A dict gives tags "name/key" (loss/dm). The
values are the loops' own: the loss floats they already record and the gradient norm that clipping
already returns, so nothing is computed for logging and no number changes. Where written:

- TensorBoard: <out>/tensorboard/<prior>/seed<k>/<stage>/ (torch.utils.tensorboard.SummaryWriter; a
  resumed stage purges the points after its checkpoint). View: tensorboard --logdir <out>/tensorboard
- wandb: one run per prior, training seed and stage (name "prior/seed<k>/stage", group "prior/seed<k>",
  job_type the stage), files under <out>/wandb.

Off the critical path: only rank 0 writes; a stage loaded from the stage store writes nothing (its loop
does not run); a sink that fails (disk full, wandb offline) is dropped with one warning and training
goes on. The packages are optional: tensorboard comes with the `logging` extra (scripts/setup.sh
installs it), wandb is never a dependency; asking for a missing one is refused when the settings are read.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench import distributed as D
from bench.config import SettingError, require
from bench.errors import UserError


@dataclass(frozen=True)
class LogConfig:
    """Experiment logging (bench/tracking.py): where the training curves go. Changes no number."""

    tensorboard: bool = False   # event files under <out>/tensorboard/<prior>/seed<k>/<stage>/
    wandb: str | None = None    # a Weights & Biases project: one run per prior, training seed and stage
    every: int = 10             # steps between written points, each the mean over those steps

    def __post_init__(self):
        require(self, positive=("every",))
        if self.wandb is not None and not self.wandb.strip():
            raise SettingError("wandb", "must name a Weights & Biases project (or none: off)", self.wandb)
        if self.tensorboard and not installed("tensorboard"):
            raise UserError(
                "Setting 'log.tensorboard=true' writes TensorBoard event files, which needs the tensorboard "
                f"package; it is not installed in this Python ({sys.executable}). Install the optional extra "
                "with `.venv/bin/pip install -e '.[logging]'` (scripts/setup.sh installs it; elsewhere "
                "`pip install 'dmvae-bench[logging]'`), or leave log.tensorboard off: logging changes no number.")
        if self.wandb is not None and not installed("wandb"):
            raise UserError(
                f"Setting 'log.wandb={self.wandb}' logs the training curves to Weights & Biases, which needs the "
                f"wandb package; it is not installed in this Python ({sys.executable}) and is not a dependency of "
                "this suite. Install it with `pip install wandb` (then `wandb login`, or set WANDB_MODE=offline "
                "to keep the runs on disk), or leave log.wandb unset (none): logging changes no number.")


def installed(module: str) -> bool:
    """Can `module` be imported? (Without importing it; a module already in sys.modules counts as it is.)"""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


class TensorBoardSink:
    """Scalars to a TensorBoard event file folder."""

    name = "TensorBoard"

    def __init__(self, folder: Path, first: int):
        from torch.utils.tensorboard import SummaryWriter

        # a stage resumed after `first` steps redoes the steps after its checkpoint: their earlier points
        # (steps first + 1 on) are purged from the display when the folder is read
        self.writer = SummaryWriter(str(folder), purge_step=first + 1 if first else None)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbSink:
    """Scalars to one Weights & Biases run."""

    name = "wandb"

    def __init__(self, project: str, name: str, group: str, stage: str, folder: Path, config: dict):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, group=group, job_type=stage, dir=str(folder),
                              config=config)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Tracker:
    """The scalars of one training stage, written to its sinks every `every` steps (see the module doc).

    `open_sinks(first)` builds the sinks when the loop starts at step `first`; with none (the default)
    the tracker is off and costs nothing.
    """

    def __init__(self, open_sinks=None, every: int = 10, label: str = ""):
        self.open_sinks, self.every, self.label = open_sinks, every, label
        self.sinks: list = []

    @classmethod
    def for_stage(cls, cfg: LogConfig | None, out: Path, prior: str, training_seed: int, stage: str,
                  config: dict | None = None) -> "Tracker":
        """The tracker of one stage of one prior and training seed, as `cfg` asks (off when cfg is None)."""
        if cfg is None or not (cfg.tensorboard or cfg.wandb):
            return cls()
        run = f"{prior.replace(':', '_')}/seed{training_seed}"

        def open_sinks(first: int) -> list:  # sink constructors (functools.partial), called by session()
            sinks = []
            if cfg.tensorboard:
                sinks.append(functools.partial(TensorBoardSink, Path(out) / "tensorboard" / run / stage, first))
            if cfg.wandb:
                sinks.append(functools.partial(WandbSink, cfg.wandb, f"{run}/{stage}", run, stage, Path(out),
                                               {**(config or {}), "prior": prior, "training_seed": training_seed,
                                                "stage": stage}))
            return sinks
        return cls(open_sinks, cfg.every, f"{run}/{stage}")

    @contextlib.contextmanager
    def session(self, first: int, steps: int, batch: int):
        """Around a stage's loop from step `first` to `steps`, `batch` images (or draws) per step."""
        if self.open_sinks is None or D.rank() != 0:  # off, or not the writing rank
            yield self
            return
        made = (self._guard(make.func.name, "could not start", make) for make in self.open_sinks(first))
        self.sinks = [sink for sink in made if sink is not None]
        self.steps, self.batch = steps, batch
        self.window: dict[str, list] = defaultdict(list)
        self.last_step, self.last_time = first, time.perf_counter()
        failed = True
        try:
            yield self
            failed = False
        finally:
            for sink in list(self.sinks):
                self._guard(sink.name, "could not close", lambda: sink.close(failed), sink)
            self.sinks = []

    def step(self, done: int, **scalars) -> None:
        """After `done` steps: this step's scalars; a point is written every `every` steps and at the last."""
        if not self.sinks:
            return
        for tag, value in _flat(scalars):
            self.window[tag].append(value)
        if done % self.every and done != self.steps:
            return
        now = time.perf_counter()
        point = {tag: float(sum(v) / len(v)) for tag, v in self.window.items()}
        point["img_per_s"] = (done - self.last_step) * self.batch / max(now - self.last_time, 1e-9)
        self.window.clear()
        self.last_step, self.last_time = done, now
        for sink in list(self.sinks):
            self._guard(sink.name, "could not write", lambda: sink.write(done, point), sink)

    def _guard(self, name: str, what: str, action, sink=None):
        """action(), or, when it fails, one warning and the sink dropped: logging never stops training."""
        try:
            return action()
        except Exception as e:  # noqa: BLE001 (any failure of a logging backend)
            warnings.warn(f"{name} {what} for {self.label} ({type(e).__name__}: {e}); training goes on "
                          f"without it", RuntimeWarning, stacklevel=3)
            if sink in self.sinks:
                self.sinks.remove(sink)
            return None


def _flat(scalars: dict, prefix: str = ""):
    """(tag, value) pairs of keyword scalars; a dict value gives "name/key" tags."""
    for name, value in scalars.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}/")
        elif value is not None:
            yield f"{prefix}{name}", value
