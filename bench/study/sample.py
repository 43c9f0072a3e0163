"""Samples of a finished study run, in the ADM `.npz` layout the field's evaluator reads.

    run_all.py sample RUN_DIR --prior NAME --num-samples N --out SAMPLES.npz [--training-seed S] [--seed 0]
                      [--cfg-scale 1.0] [--steps K]
    torchrun --nproc_per_node 8 run_all.py sample ...     # the same file, N / 8 samples per GPU

Then `run_all.py score SAMPLES.npz VIRTUAL_imagenet256_labeled.npz` gives FID, sFID, precision/recall
and IS under openai/guided-diffusion's protocol (bench/metrics/standard.py).

- The run's resolved config is read from RUN_DIR/results.json and the finished tokenizer and generator
  are loaded from its stage store (nothing is trained; a stage that is not finished is an error).
- Sample i has label i mod K and its own noise (bench/dmvae/generator.py generate), the convention of
  the study's own gFID. With the run's sampling batch (eval.batch, the default) the first N samples of
  seed s are the study's gFID-N samples of seed s bit for bit (tests/test_study.py); the world size and
  resuming never change a sample. Another batch size changes pixels by float rounding only (batched
  matmuls sum in another order; a pixel may move by a uint8 level or two).
- The N indices are cut into chunks of about CHUNK (whole batches); rank r writes chunks r, r + W, ... as
  SAMPLES.npz.parts/chunk-J.npz (atomically), so a killed job resumes at the first missing chunk.
  Rank 0 then joins them into SAMPLES.npz: arr_0 uint8 (N, H, W, 3) (grey replicated to RGB, quantised
  as everywhere in the suite: round((x + 1) * 127.5)), arr_1 the labels; and a JSON sidecar
  SAMPLES.npz.json with the run, prior, seeds and sampler settings.
"""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench import distributed as D
from bench.errors import UserError
from bench.io import atomic_write_bytes, atomic_write_json

CHUNK = 1000


def load_run(run_dir: Path, prior: str, training_seed: int, cache):
    """(the run's config, its PriorRun and context) from RUN_DIR/results.json, or one paragraph why not."""
    from bench.config import build
    from bench.study.config import StudyConfig
    from bench.study.pipeline import PriorRun
    from bench.study.runner import Context
    from bench.study.stages import StageStore

    path = Path(run_dir) / "results.json"
    try:
        meta = json.loads(path.read_text())["meta"]
        config = meta["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"'{run_dir}' holds no readable results.json with meta.config, so it is not the --out "
                        f"folder of a study run. Give the folder a study run wrote (run_all.py --out DIR).") from None
    cfg = build(StudyConfig, config)
    ctx = Context(cfg, Path(run_dir), cache, StageStore(Path(run_dir)), results={}, log=lambda *a, **k: None)
    if prior not in cfg.priors:
        raise UserError(f"The run in '{run_dir}' has no prior '{prior}' (it ran {', '.join(cfg.priors)}). Pass one "
                        f"of those with --prior.")
    if training_seed not in cfg.training_seeds:
        raise UserError(f"The run in '{run_dir}' has no training seed {training_seed} (it ran "
                        f"{', '.join(map(str, cfg.training_seeds))}). Pass one of those with --training-seed.")
    return cfg, PriorRun(prior, ctx, training_seed), ctx


def load_sampler(run, data):
    """(generator EMA model, decoder, the generator's LatentNorm) of a finished run, loaded from its store."""
    from bench.dmvae.latent_norm import LatentNorm
    from bench.study.pipeline import _dit, _tokenizer

    found = {}
    for stage in ("dmvae", "generator"):
        hit = run.store.load(run.name, stage, run.keys[stage])
        if hit is None:
            raise UserError(f"The {stage} stage of prior '{run.name}' (training seed {run.tseed}) is not finished in "
                            f"'{run.store.root}' (looked for {run.store.dir(run.name, stage, run.keys[stage])}). "
                            f"Finish the run first (run the same run_all.py command again: it resumes), then "
                            f"sample.")
        found[stage] = hit
    (tok_state, _), (gen_state, gen_record) = found["dmvae"], found["generator"]
    _, decoder = _tokenizer(run, tok_state, variational=run.baseline)
    model = _dit(run.cfg.generator, gen_state["final"], run.latent_shape, data.num_classes).to(D.device())
    return model, decoder, LatentNorm.from_dict(gen_record["norm"])


def _chunk_path(parts: Path, j: int) -> Path:
    return parts / f"chunk-{j:06d}.npz"


def _read_chunk(path: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A finished chunk's (images, labels), or None when it is missing or not whole."""
    try:
        with np.load(path) as f:
            x, y = f["arr_0"], f["arr_1"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (x, y) if len(x) == size and len(y) == size else None


def sample_run(run_dir: Path, prior: str, n: int, out: Path, training_seed: int = 0, seed: int = 0,
               cfg_scale: float | None = None, steps: int | None = None, batch: int | None = None, cache=None,
               log=print) -> Path:
    """Write N samples of a finished run as an ADM .npz (see the module docstring); returns its path."""
    from bench.cache import Cache
    from bench.dmvae import generate
    from bench.metrics.adm_npz import to_adm_array

    if n < 1:
        raise UserError(f"--num-samples must be at least 1 (got {n}).")
    D.init()
    cfg, run, ctx = load_run(run_dir, prior, training_seed, cache or Cache())
    model, decoder, norm = load_sampler(run, ctx.data)
    ev = cfg.eval
    batch = batch or ev.batch
    settings = {"steps": steps or ev.sample_steps, "cfg": ev.cfg_scale if cfg_scale is None else cfg_scale,
                "shift": ev.shift}
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    if D.rank() == 0:
        parts.mkdir(parents=True, exist_ok=True)
    D.barrier()
    size = -(-CHUNK // batch) * batch  # whole batches, so the batches fall where the study's fell
    chunks = [(j, j * size, min(n, (j + 1) * size)) for j in range(-(-n // size))]
    t0, done = time.time(), 0
    for j, lo, hi in chunks[D.rank()::D.world_size()]:
        if _read_chunk(_chunk_path(parts, j), hi - lo) is not None:
            continue  # finished by an earlier (killed) job
        images, labels = generate(model, hi - lo, ctx.data.num_classes, seed, decoder=decoder, norm=norm, first=lo,
                                  batch_size=batch, **settings)
        buf = io.BytesIO()
        np.savez(buf, arr_0=to_adm_array(images), arr_1=labels.numpy().astype(np.int64))
        atomic_write_bytes(_chunk_path(parts, j), buf.getvalue())
        done += hi - lo
        log(f"[sample] rank {D.rank()}: samples {lo}..{hi - 1} written ({done / (time.time() - t0):.1f} img/s)")
    D.barrier()
    if D.rank() == 0:
        got = [_read_chunk(_chunk_path(parts, j), hi - lo) for j, lo, hi in chunks]
        missing = [j for j, g in zip(range(len(chunks)), got) if g is None]
        if missing:
            raise UserError(f"Chunks {missing[:5]} of '{parts}' are missing or damaged after sampling; run the same "
                            f"command again to write them.")
        buf = io.BytesIO()
        np.savez(buf, arr_0=np.concatenate([g[0] for g in got]), arr_1=np.concatenate([g[1] for g in got]))
        atomic_write_bytes(out, buf.getvalue())
        atomic_write_json(out.with_name(out.name + ".json"), {
            "run_dir": str(run_dir), "config_hash": json.loads((Path(run_dir) / "results.json").read_text())
            ["meta"].get("config_hash"), "prior": prior, "training_seed": training_seed, "stage_keys": run.keys,
            "n": n, "seed": seed, "labels": "class-balanced: sample i has label i mod K",
            "noise": "one torch.Generator per sample index (seed * 1_000_003 + i)", "sampler": settings,
            "quantisation": "round((x + 1) * 127.5), clamped; grey replicated to RGB",
            "batch": batch, "world_size": D.world_size()})
        shutil.rmtree(parts, ignore_errors=True)
        log(f"samples: {out} ({n} images)")
    D.barrier()
    return out
