"""One prior's stages for one training seed, each computed once and then loaded from its content-addressed
folder (stages.py).

    prior -> teacher S_real (+ p_r's LatentNorm) -> encoder start -> DM stage -> generator -> evaluate
The vae row replaces teacher/start/DM by the KL baseline (bench/dmvae/vae_baseline.py); its prior is
still built, for the reference latents of the structure metrics. The prior is shared by the training
seeds (its key has no training seed); every later stage has one folder per training seed. Stages are
lazy: when the evaluation is finished nothing upstream is loaded, so a cached re-run costs seconds.
"""
from __future__ import annotations

import dataclasses
import time
from functools import cached_property

import torch

from bench import distributed as D
from bench.core.dit import build_dit
from bench.core.flow import sample_ode
from bench.dmvae import (Start, build_tokenizer, encode, encode_latents, pretrain_autoencoder,
                         resolve_start, train_dmvae, train_generator, train_teacher, train_vae_baseline)
from bench.dmvae.latent_norm import LatentNorm, measure_norm
from bench.metrics import matching
from bench.progress import Progress
from bench.study import evaluate as E
from bench.study.stages import stage_key
from priors.base import PriorSettings
from priors.registry import get_prior

EVALUATE_VERSION = 3  # 3: matching statistics with floors, convergence rule, generator's own LatentNorm
BASELINE = "vae"  # the prior whose row is the KL-VAE baseline (no distribution matching)


def _asdict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _prior_key(settings: PriorSettings) -> dict:
    """The prior stage's key fields. `feature_size` is hashed under its former name `size`, so run
    folders written before the rename keep their finished stages."""
    d = _asdict(settings)
    d["size"] = d.pop("feature_size")
    return d


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class PriorRun:
    """The stages of one prior and training seed; `on_stage(stage, seconds, cached)` is called after each."""

    def __init__(self, name: str, ctx, training_seed: int = 0):
        self.name, self.ctx, self.tseed = name, ctx, training_seed
        self.cfg = ctx.cfg.for_training_seed(training_seed)
        self.cls = get_prior(name)
        c = self.cfg
        self.settings = PriorSettings.of(c.prior, latent_channels=c.latent_channels, latent_size=c.latent_size,
                                         features=c.features, weights_dir=c.weights_dir,
                                         feature_size=c.feature_size, seed=c.seed)
        self.latent_shape = (c.latent_channels, c.latent_size, c.latent_size)
        self.baseline = self.cls.info.name == BASELINE
        data_fp, images = ctx.data_fp, list(ctx.data.train.images.shape[1:])
        k = {"prior": stage_key("prior", name, self.cls.info.version, _prior_key(self.settings), data_fp)}
        if not self.baseline:
            k["teacher"] = stage_key("teacher", k["prior"], _asdict(c.teacher))
            self.start_kind = resolve_start(c.start, self.cls)
            shared = self.start_kind == "plain-ae"  # the plain AE does not depend on the prior: one for all rows
            k["start"] = stage_key("start", self.start_kind, _asdict(c.pretrain), _asdict(c.dmvae.tokenizer),
                                   self.latent_shape, images, data_fp, None if shared else k["prior"])
            self.start_owner = "_shared" if shared else name
            k["dmvae"] = stage_key("dmvae", k["teacher"], k["start"], _asdict(c.dmvae))
        else:
            k["dmvae"] = stage_key("vae-baseline", _asdict(c.dmvae), _asdict(c.pretrain), self.latent_shape, images,
                                   data_fp)
        k["generator"] = stage_key("generator", k["dmvae"], _asdict(c.generator))
        k["evaluate"] = stage_key("evaluate", k["generator"], k["prior"], _asdict(c.eval), c.seed,
                                  EVALUATE_VERSION)
        self.keys = k
        self._nested = 0.0  # seconds spent in stages computed or loaded inside the current one

    # ---------------------------------------------------------------------------------- helpers
    def _stage(self, stage: str, compute, owner: str | None = None, collective: bool = True):
        """Load a finished stage or compute it: compute(resume_path) -> (state, record).

        Training stages are collective (every rank trains, rank 0 writes); collective=False is
        for work rank 0 does alone (evaluation). Stages are lazy, so computing one may compute
        or load the stages it reads: its recorded `seconds` is its OWN time (the time of the
        stages it computed or loaded inside subtracted); `seconds_inclusive` keeps the total.
        """
        owner = owner or self.name
        store, key = self.ctx.store, self.keys[stage]
        t0 = time.time()
        hit = store.load(owner, stage, key)
        if hit is not None:
            self._nested += time.time() - t0  # loading a finished stage is not the caller's own work either
            self.ctx.on_stage(self.name, stage, hit[1].get("seconds"), cached=True)
            return hit
        outer, self._nested = self._nested, 0.0
        try:
            state, record = compute(store.resume_path(owner, stage, key, collective))
            total = time.time() - t0
            record = {**record, "seconds": total - self._nested, "seconds_inclusive": total}
        finally:
            self._nested = outer + (time.time() - t0)
        E.finite_or_raise(record, f"{stage} record")
        store.save(owner, stage, key, state, record, collective)
        self.ctx.on_stage(self.name, stage, record["seconds"], cached=False)
        return state, record

    def record(self, stage: str) -> dict:
        """A finished stage's record (no tensors loaded), or {}."""
        owner = self.start_owner if stage == "start" else self.name
        hit = self.ctx.store.load(owner, stage, self.keys[stage], tensors=False)
        return hit[1] if hit is not None else {}

    def timings(self) -> dict:
        """Seconds each finished stage took when it was computed (from the stage records)."""
        return {s: r["seconds"] for s in self.keys if (r := self.record(s)).get("seconds") is not None}

    def throughput(self) -> dict:
        """Training images (or prior draws) per second of each training stage, as measured."""
        out = {}
        for stage in ("teacher", "start", "dmvae", "generator"):
            r = self.record(stage) if stage in self.keys else {}
            hist = r.get("history") or r.get("start") or r
            if isinstance(hist, dict) and hist.get("img_per_s") is not None:
                out[stage] = hist["img_per_s"]
        return out

    def models(self) -> dict:
        """Sizes of the nets this prior trained (parameter counts from the stage records)."""
        c, gen = self.cfg, self.record("generator")
        cps = gen.get("checkpoints") or [{}]
        out = {"generator": {"size": c.generator.net, "params": gen.get("params"), "steps": c.generator.steps,
                             "batch": c.generator.batch, "epochs": cps[-1].get("epoch")},
               "tokenizer": self.record("dmvae").get("params")}
        if "teacher" in self.keys:
            out["score_nets"] = {"size": c.teacher.net, "params": self.record("teacher").get("params")}
        return out

    def _every(self) -> int:
        return self.cfg.checkpoint_every

    # ---------------------------------------------------------------------------------- stages
    @cached_property
    def provenance(self) -> dict:
        """The prior's provenance, from its stage record (building the prior only when missing)."""
        if "prior" not in self.__dict__:  # not built in this run: its record has it
            hit = self.ctx.store.load(self.name, "prior", self.keys["prior"], tensors=False)
            if hit is not None:
                return hit[1]["provenance"]
        return self.prior.provenance()

    @cached_property
    def prior(self):
        data, cache = self.ctx.data, self.ctx.cache
        holder = {}

        def build(_resume):
            with D.rank0_first():  # feature nets and latents are cached: rank 0 builds, the others load
                holder["prior"] = self.cls(self.settings, data).build(cache)
            return None, {"provenance": holder["prior"].provenance()}

        hit = self.ctx.store.load(self.name, "prior", self.keys["prior"], tensors=False)
        if hit is None:
            self._stage("prior", build)
            return holder["prior"]
        with D.rank0_first():
            return self.cls(self.settings, data).build(cache)

    @cached_property
    def teacher(self) -> tuple[torch.nn.Module, LatentNorm]:
        c, stats = self.cfg.teacher, {}

        def compute(resume):
            net, norm = train_teacher(self.prior, c, stats, checkpoint=resume, checkpoint_every=self._every())
            return {"net": net.state_dict()}, {**stats, "norm": norm.to_dict(), "params": n_params(net)}

        state, record = self._stage("teacher", compute)
        net = build_dit(c.net, self.latent_shape, self.ctx.data.num_classes, c.patch, c.pos)
        net.load_state_dict(state["net"])
        return net.eval().requires_grad_(False), LatentNorm.from_dict(record["norm"])

    @cached_property
    def start(self) -> Start:
        c, images = self.cfg, self.ctx.data.train.images

        def compute(_resume):
            reference = self.prior.reference_latents if self.start_kind == "reference-ae" else None
            s = pretrain_autoencoder(images, self.latent_shape, c.pretrain, c.dmvae.tokenizer, reference=reference)
            return ({"encoder": s.encoder.state_dict(), "decoder": s.decoder.state_dict()},
                    {"start": {**s.record, "requested": c.start}})

        state, record = self._stage("start", compute, owner=self.start_owner)
        enc, dec = self._tokenizer(state)
        return Start(enc, dec, record["start"])

    def _tokenizer(self, state: dict, variational: bool = False):
        enc, dec = build_tokenizer(tuple(self.ctx.data.train.images.shape[1:]), self.latent_shape,
                                   self.cfg.dmvae.tokenizer, variational=variational)
        enc.load_state_dict(state["encoder"])
        dec.load_state_dict(state["decoder"])
        return enc.to(D.device()).eval(), dec.to(D.device()).eval()

    @cached_property
    def tokenizer(self) -> tuple[torch.nn.Module, torch.nn.Module, LatentNorm, dict]:
        """(EMA encoder, EMA decoder, LatentNorm, history) of the DM stage, or of the KL baseline."""
        data, c = self.ctx.data.train, self.cfg.dmvae

        def compute(resume):
            if self.baseline:
                enc, dec, norm, hist = train_vae_baseline(data.images, data.labels, self.latent_shape, c,
                                                          self.cfg.pretrain, checkpoint=resume,
                                                          checkpoint_every=self._every())
            else:
                s_real, norm = self.teacher
                x_probe, _ = self.ctx.matching_images(c.probe_n)
                z_ref, _ = self.prior.sample(c.probe_n, torch.Generator().manual_seed(self.cfg.seed + 11))
                probe = (x_probe, matching.Matcher(norm.apply(z_ref), seed=self.cfg.seed))
                enc, dec, _, hist = train_dmvae(data.images, data.labels, self.prior, s_real, norm, c, self.start,
                                                probe=probe, checkpoint=resume, checkpoint_every=self._every())
            return ({"encoder": enc.state_dict(), "decoder": dec.state_dict()},
                    {"history": hist, "norm": norm.to_dict(),
                     "params": {"encoder": n_params(enc), "decoder": n_params(dec)}})

        state, record = self._stage("dmvae", compute)
        enc, dec = self._tokenizer(state, variational=self.baseline)
        return enc, dec, LatentNorm.from_dict(record["norm"]), record["history"]

    @cached_property
    def generator(self) -> tuple[torch.nn.Module, list[dict], dict]:
        c, data = self.cfg.generator, self.ctx.data

        def compute(resume):
            enc = self.tokenizer[0]
            # The generator models the FINAL tokenizer's latents, so they are normalised by their own
            # statistics (paper section 3.5; the reference code measures latent_mean/scale after the DM stage).
            raw = encode(enc, data.train.images)
            norm = measure_norm(raw, "DMVAE encoder latents of the train images (after the DM stage)")
            latents = norm.apply(raw)
            E.finite_or_raise(float(latents.abs().max()), "generator training latents")
            model, cps, hist = train_generator(latents, data.train.labels, data.num_classes, c,
                                               checkpoint=resume, checkpoint_every=self._every())
            return ({"final": model.state_dict(), "checkpoints": [cp["state_dict"] for cp in cps]},
                    {"history": hist, "params": n_params(model), "norm": norm.to_dict(),
                     "checkpoints": [{k: v for k, v in cp.items() if k != "state_dict"} for cp in cps]})

        state, record = self._stage("generator", compute)
        model = build_dit(c.net, self.latent_shape, data.num_classes, c.patch, c.pos)
        model.load_state_dict(state["final"])
        cps = [{**meta, "state_dict": sd} for meta, sd in zip(record["checkpoints"], state["checkpoints"])]
        return model.to(D.device()).eval().requires_grad_(False), cps, record

    def matching(self) -> dict:
        """Did q(z) reach p_r? Statistics of the start and final encoders on held-out images, of S_real's
        own samples, and the floor (two independent p_r draws), all against one fixed p_r draw
        (bench/metrics/matching.py), in p_r's normalised space."""
        ev = self.cfg.eval
        s_real, norm = self.teacher
        z_a, y_a = self.prior.sample(ev.match_n, torch.Generator().manual_seed(self.cfg.seed + 21))
        z_b, _ = self.prior.sample(ev.match_n, torch.Generator().manual_seed(self.cfg.seed + 22))
        matcher = matching.Matcher(norm.apply(z_a), seed=self.cfg.seed)
        x, _ = self.ctx.matching_images(ev.match_n)
        before = matcher.stats(norm.apply(encode(self.start.encoder, x)))
        after = matcher.stats(norm.apply(encode(self.tokenizer[0], x)))
        floor = matcher.floor(norm.apply(z_b))
        g = torch.Generator().manual_seed(self.cfg.seed + 23)
        noise = torch.randn(z_a.shape, generator=g).to(D.device())
        with torch.no_grad():  # S_real's own samples, with p_r's label mix: as close as DM can get
            z_teacher = sample_ode(s_real.to(D.device()), noise, y_a.to(D.device()), steps=ev.sample_steps).cpu()
        return {"before": before, "after": after, "floor": floor, "teacher_samples": matcher.stats(z_teacher),
                **matching.reached(before, after, floor),
                "space": "p_r's normalised latents; x = held-out images, reference = p_r draws",
                "start": self.start_kind}

    def evaluate(self) -> tuple[dict, dict]:
        """(metrics record, figure data: t-SNE coordinates and image grids) of the finished run."""
        ctx, ev = self.ctx, self.cfg.eval

        def compute(_resume):
            enc, dec, _, hist = self.tokenizer
            model, cps, gen_record = self.generator
            norm = LatentNorm.from_dict(gen_record["norm"])  # the generator's latents are the DMVAE's, normalised
            images, _ = ctx.held_out
            ref = ctx.reference
            ctx.log(f"[{self.name}] evaluate: rFID-{ev.ref_n}, gFID-{ev.gfid_n} x {len(ev.seeds)} seeds, "
                    f"{len(cps) - 1} convergence points, structure, t-SNE")
            total = ev.ref_n + ev.gfid_n * len(ev.seeds) + ev.convergence_n * (len(cps) - 1)
            progress = Progress(total, f"[{self.name} seed {self.tseed}] evaluate", ctx.log, every=30.0)
            rec, rec_grid = E.reconstruction(enc, dec, images, ref, ev, ctx.cache, progress=progress)
            k = ctx.data.num_classes
            gen, samples = E.generation(model, cps, dec, norm, k, self.cfg.generator, ref, ev, ctx.cache,
                                        log=ctx.log, keep=4 * k, progress=progress)  # 4 per class, label = column
            z_ref, y_ref = self.prior.sample(ev.structure_n, torch.Generator().manual_seed(self.cfg.seed))
            x_s, y_s = ctx.structure_images
            z_dm = encode_latents(enc, x_s, norm)
            z_ref = measure_norm(z_ref, "reference").apply(z_ref)  # standardised like every latent space here
            s_ref, t_ref = E.latent_structure(z_ref, y_ref, ev, self.cfg.seed)
            s_dm, t_dm = E.latent_structure(z_dm, y_s, ev, self.cfg.seed)
            record = {"rfid": rec["rfid"], "psnr": rec["psnr"], "ssim": rec["ssim"], "rfid_n": rec["n"],
                      **gen, "structure": {"reference": s_ref, "dmvae": s_dm},
                      "matching": None if self.baseline else self.matching(),
                      "generator_norm": norm.to_dict(), "training_seed": self.tseed,
                      "tokenizer": {k: hist.get(k) for k in ("curve", "start", "loss_terms", "regulariser",
                                                              "tokenizer_updates")}}
            tsne = {"reference_xy": t_ref["xy"], "reference_labels": t_ref["labels"],
                    "dmvae_xy": t_dm["xy"], "dmvae_labels": t_dm["labels"],
                    "recon_grid": rec_grid, "sample_grid": E.image_grid(samples, k)}
            return tsne, record

        if D.world_size() > 1 and self.ctx.store.load(self.name, "evaluate", self.keys["evaluate"]) is None:
            # Rank 0 evaluates alone (samples are seeded per index, so the numbers do not depend on
            # the world size); the other ranks wait and read its record.
            self.prior, self.tokenizer, self.generator  # noqa: B018  (collective: barriers inside)
            if not self.baseline:  # matching() reads the teacher and the start: load (or train) them on every rank
                self.teacher, self.start  # noqa: B018
            try:
                if D.rank() == 0:
                    self._stage("evaluate", compute, collective=False)
            finally:
                D.barrier()
            self.ctx.store.recomputed.add((self.name, "evaluate"))  # rank 0's fresh output, also if forced
            hit = self.ctx.store.load(self.name, "evaluate", self.keys["evaluate"])
            if hit is None:
                raise RuntimeError("evaluation failed on rank 0 (see its message)")
            return hit[1], hit[0]
        state, record = self._stage("evaluate", compute)
        return record, state
