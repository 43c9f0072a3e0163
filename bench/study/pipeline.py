"""One prior and one training seed, top to bottom: `run_prior` is the order of the method.

    prior p_r -> teacher S_real (+ p_r's LatentNorm) -> encoder start -> DM stage -> generator -> evaluation
                                                                                      [-> guidance sweep]

Every step is a stage, computed once and then loaded from its content-addressed folder (stages.py).
The vae row replaces teacher/start/DM by the KL baseline (bench/dmvae/vae_baseline.py); its prior is
still built, for the reference latents of the structure metrics. The prior is shared by the training
seeds (its key has no training seed); every later stage has one folder per training seed. Stages are
lazy: when the evaluation is finished nothing upstream is loaded, so a cached re-run costs seconds. The
guidance sweep (eval.cfg_scales, bench/study/guidance.py) is a stage of its own after the evaluation,
keyed on the generator and the settings it reads: adding it to a finished run computes only the sweep.
`PriorRun` says what a run is (config, prior, stage keys) and reads its finished records; it trains nothing.
"""
from __future__ import annotations


import torch

from bench import distributed as D
from bench.compute import TRAINING_STAGES, Compute
from bench.config import keyed_dict, to_dict
from bench.core.dit import build_dit
from bench.core.flow import sample_ode
from bench.dmvae import (Start, build_tokenizer, encode, encode_latents, pretrain_autoencoder,
                         resolve_start, train_dmvae, train_generator, train_teacher, train_vae_baseline)
from bench.dmvae.latent_norm import LatentNorm, measure_norm
from bench.dmvae.latent_source import EncodeOnTheFly, cache_latents
from bench.metrics import matching
from bench.progress import Progress
from bench.study import evaluate as E
from bench.study import guidance as G
from bench.study.stages import PriorStages, stage_key
from bench.tracking import Tracker
from priors.base import NET_KINDS, PriorSettings
from priors.registry import get_prior

EVALUATE_VERSION = 3  # 3: matching statistics with floors, convergence rule, generator's own LatentNorm
BASELINE = "vae"  # the prior whose row is the KL-VAE baseline (no distribution matching)


def _asdict(cfg) -> dict:
    return keyed_dict(cfg)  # neutral added_later settings left out: finished stages stay valid (bench/config.py)


def _prior_key(settings: PriorSettings) -> dict:
    """The prior stage's key fields. `feature_size` is hashed under its former name `size`, and the
    pretrained-network choices (dino_net, ...) only when set, so run folders written before the rename
    and before those settings existed keep their finished stages."""
    d = _asdict(settings)
    d["size"] = d.pop("feature_size")
    for kind in NET_KINDS:
        if d[f"{kind}_net"] is None:
            del d[f"{kind}_net"]
    return d


def _compute_keys(c) -> dict:
    """Per training stage, the extra stage-key part of the applied compute settings: () when none apply,
    so a CPU run (and a GPU run at fp32 without TF32, fused AdamW or compile) keeps its earlier keys."""
    out = {}
    for stage in TRAINING_STAGES:
        key = Compute(c.compute, stage, D.device()).key()
        out[stage] = () if key is None else ({"compute": key},)
    return out


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def run_prior(run: "PriorRun", ctx) -> tuple[dict, dict]:
    """(evaluation record, figure data) of one prior and training seed, computing what is not finished."""
    c, data, every = run.cfg, ctx.data, run.cfg.checkpoint_every
    stages = PriorStages(ctx.store, run.name, run.keys, ctx.on_stage, owners={"start": run.start_owner})

    # 1. p_r: the prior's reference latents (its feature nets and latents live in the content cache).
    def build_prior(_resume):
        with D.rank0_first():  # rank 0 builds, the others load from the cache
            built.append(run.cls(run.settings, data).build(ctx.cache))
        return None, {"provenance": built[0].provenance()}
    built = []

    def prior():
        if not built:
            if stages.record("prior") is None:
                stages.run("prior", build_prior)
            else:
                with D.rank0_first():
                    built.append(run.cls(run.settings, data).build(ctx.cache))
        return built[0]

    if stages.record("prior") is None:  # its record holds the provenance the report shows
        prior()

    # 2. S_real: flow matching on p_r's draws (docs/method.md 3.2), and p_r's LatentNorm.
    def train_s_real(resume):
        stats = {}
        net, norm = train_teacher(prior(), c.teacher, stats, checkpoint=resume, checkpoint_every=every,
                                  compute=c.compute, track=run.tracker(ctx.out, "teacher"))
        return {"net": net.state_dict()}, {**stats, "norm": norm.to_dict(), "params": n_params(net)}
    teacher = stages.lazy("teacher", train_s_real, lambda state, record: (
        _dit(c.teacher, state["net"], run.latent_shape, data.num_classes), LatentNorm.from_dict(record["norm"])))

    # 3. The encoder start (paper section 3.3): the plain AE, or the prior's stage-1 reference AE.
    def train_start(_resume):
        reference = prior().reference_latents if run.start_kind == "reference-ae" else None
        s = pretrain_autoencoder(data.train.images, run.latent_shape, c.pretrain, c.dmvae.tokenizer,
                                 reference=reference, compute=c.compute, track=run.tracker(ctx.out, "start"))
        return ({"encoder": s.encoder.state_dict(), "decoder": s.decoder.state_dict()},
                {"start": {**s.record, "requested": c.start}})
    start = stages.lazy("start", train_start,
                        lambda state, record: Start(*_tokenizer(run, state), record["start"]))

    # 4. The DM stage: the tokenizer pulled towards p_r through S_real and S_fake (docs/method.md 2);
    #    the vae row trains the KL baseline instead, with the same budget.
    def train_tokenizer(resume):
        images, labels = data.train.images, data.train.labels
        if run.baseline:
            enc, dec, norm, hist = train_vae_baseline(images, labels, run.latent_shape, c.dmvae, c.pretrain,
                                                      checkpoint=resume, checkpoint_every=every,
                                                      track=run.tracker(ctx.out, "dmvae"))
        else:
            s_real, norm = teacher()
            x_probe, _ = ctx.matching_images(c.dmvae.probe_n)
            z_ref, _ = prior().sample(c.dmvae.probe_n, torch.Generator().manual_seed(c.seed + 11))
            probe = (x_probe, matching.Matcher(norm.apply(z_ref), seed=c.seed))
            enc, dec, _, hist = train_dmvae(images, labels, prior(), s_real, norm, c.dmvae, start(), probe=probe,
                                            checkpoint=resume, checkpoint_every=every, compute=c.compute,
                                            track=run.tracker(ctx.out, "dmvae"))
        return ({"encoder": enc.state_dict(), "decoder": dec.state_dict()},
                {"history": hist, "norm": norm.to_dict(), "params": {"encoder": n_params(enc), "decoder": n_params(dec)}})
    tokenizer = stages.lazy("dmvae", train_tokenizer, lambda state, record: (
        *_tokenizer(run, state, variational=run.baseline), LatentNorm.from_dict(record["norm"]), record["history"]))

    # 5. The generator: a DiT on the final tokenizer's latents, normalised by their own statistics
    #    (paper section 3.5; the reference code measures latent_mean/scale after the DM stage).
    def train_downstream(resume):
        encoder = tokenizer()[0]
        raw = encode(encoder, data.train.images)
        norm = measure_norm(raw, "DMVAE encoder latents of the train images (after the DM stage)")
        if c.generator.latents == "cached":  # encoded once, with the mirrored images when flip is on
            latents = cache_latents(encoder, data.train.images, norm, c.generator.flip, raw=raw)
            E.finite_or_raise(float(latents.latents.abs().max()), "generator training latents")
        else:
            latents = EncodeOnTheFly(encoder, data.train.images, norm)
        model, cps, hist = train_generator(latents, data.train.labels, data.num_classes, c.generator,
                                           checkpoint=resume, checkpoint_every=every, compute=c.compute,
                                           track=run.tracker(ctx.out, "generator"))
        return ({"final": model.state_dict(), "checkpoints": [cp["state_dict"] for cp in cps]},
                {"history": hist, "params": n_params(model), "norm": norm.to_dict(),
                 "checkpoints": [{k: v for k, v in cp.items() if k != "state_dict"} for cp in cps]})

    def load_generator(state, record):
        model = _dit(c.generator, state["final"], run.latent_shape, data.num_classes).to(D.device())
        cps = [{**meta, "state_dict": sd} for meta, sd in zip(record["checkpoints"], state["checkpoints"])]
        return model, cps, record
    generator = stages.lazy("generator", train_downstream, load_generator)

    # 6. Evaluation: reconstruction, generation and its convergence, matching, latent structure.
    def evaluate(_resume):
        match = None if run.baseline else lambda: _matching(run, ctx, prior(), teacher(), start(), tokenizer()[0])
        return _evaluate(run, ctx, prior(), tokenizer(), generator(), match)

    # 7. The guidance sweep (eval.cfg_scales): Table 1's samples at each CFG scale, per-class FID.
    def guide(_resume):
        return None, _guidance(run, ctx, tokenizer(), generator())

    sweep = "guidance" in run.keys
    if D.world_size() > 1:
        upstream = (prior, tokenizer, generator) if run.baseline else (prior, teacher, start, tokenizer, generator)
        figures, record = _on_rank0(run, stages, "evaluate", evaluate, upstream)
        guided = _on_rank0(run, stages, "guidance", guide, (tokenizer, generator))[1] if sweep else None
    else:
        figures, record = stages.run("evaluate", evaluate)
        guided = stages.run("guidance", guide)[1] if sweep else None
    return ({**record, "guidance": _strip_stage_fields(guided)} if sweep else record), figures


class PriorRun:
    """What one prior and training seed is: its config, prior class and settings, start and stage keys.

    Nothing is trained or loaded here (run_prior does the work); the readers below summarise the
    finished stages from their records.
    """

    def __init__(self, name: str, ctx, training_seed: int = 0):
        self.name, self.tseed, self.store = name, training_seed, getattr(ctx, "store", None)
        self.cfg = ctx.cfg.for_training_seed(training_seed)
        self.cls = get_prior(name)
        c = self.cfg
        self.settings = PriorSettings.of(c.prior, latent_channels=c.latent_channels, latent_size=c.latent_size,
                                         features=c.features, weights_dir=c.weights_dir,
                                         feature_size=c.feature_size, seed=c.seed)
        self.latent_shape = (c.latent_channels, c.latent_size, c.latent_size)
        self.baseline = self.cls.info.name == BASELINE
        data_fp, images = ctx.data_fp, list(ctx.data.train.images.shape[1:])
        self.image_shape = tuple(images)
        self.start_kind = self.start_owner = None  # the vae row has no encoder start
        cx = _compute_keys(c)  # applied GPU settings that change numbers; nothing on a CPU (bench/compute.py)
        k = {"prior": stage_key("prior", name, self.cls.info.version, _prior_key(self.settings), data_fp)}
        if not self.baseline:
            k["teacher"] = stage_key("teacher", k["prior"], _asdict(c.teacher), *cx["teacher"])
            self.start_kind = resolve_start(c.start, self.cls)
            shared = self.start_kind == "plain-ae"  # the plain AE does not depend on the prior: one for all rows
            k["start"] = stage_key("start", self.start_kind, _asdict(c.pretrain), _asdict(c.dmvae.tokenizer),
                                   self.latent_shape, images, data_fp, None if shared else k["prior"], *cx["start"])
            self.start_owner = "_shared" if shared else name
            k["dmvae"] = stage_key("dmvae", k["teacher"], k["start"], _asdict(c.dmvae), *cx["dmvae"])
        else:
            k["dmvae"] = stage_key("vae-baseline", _asdict(c.dmvae), _asdict(c.pretrain), self.latent_shape, images,
                                   data_fp)
        k["generator"] = stage_key("generator", k["dmvae"], _asdict(c.generator), *cx["generator"])
        evaluation = {s: v for s, v in _asdict(c.eval).items() if s != "cfg_scales"}  # the sweep: its own stage
        k["evaluate"] = stage_key("evaluate", k["generator"], k["prior"], evaluation, c.seed, EVALUATE_VERSION)
        if c.eval.cfg_scales:
            k["guidance"] = stage_key("guidance", k["generator"], {s: getattr(c.eval, s) for s in G.KEY_SETTINGS},
                                      c.seed, G.VERSION)
        self.keys = k

    def owner(self, stage: str) -> str:
        """The stage folder's owner: the prior, or "_shared" for the plain-AE start every row shares."""
        return self.start_owner if stage == "start" else self.name

    def tracker(self, out, stage: str) -> Tracker:
        """The experiment logs of one training stage while it trains (bench/tracking.py; off unless cfg.log asks)."""
        return Tracker.for_stage(self.cfg.log, out, self.owner(stage), self.tseed, stage, to_dict(self.cfg))

    def record(self, stage: str) -> dict:
        """A finished stage's record (no tensors loaded), or {}."""
        owner = self.owner(stage)
        hit = self.store.load(owner, stage, self.keys[stage], tensors=False)
        return hit[1] if hit is not None else {}

    def provenance(self) -> dict:
        """What the prior was built from (its stage record)."""
        return self.record("prior").get("provenance", {})

    def timings(self) -> dict:
        """Seconds each finished stage took when it was computed (its own time, from the stage records)."""
        return {s: r["seconds"] for s in self.keys if (r := self.record(s)).get("seconds") is not None}

    def _from_training_stages(self, key: str) -> dict:
        """`key` of each training stage's loop history (the encoder start keeps its own under "start")."""
        out = {}
        for stage in ("teacher", "start", "dmvae", "generator"):
            r = self.record(stage) if stage in self.keys else {}
            hist = r.get("history") or r.get("start") or r
            if isinstance(hist, dict) and hist.get(key) is not None:
                out[stage] = hist[key]
        return out

    def throughput(self) -> dict:
        """Training images (or prior draws) per second of each training stage, as measured."""
        return self._from_training_stages("img_per_s")

    def compute(self) -> dict:
        """Each training stage's compute record (settings applied or why not, FLOPs/image, MFU, peak memory)."""
        return self._from_training_stages("compute")

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


# ------------------------------------------------------------------------------------------ helpers
def _dit(cfg, state: dict, latent_shape, num_classes: int) -> torch.nn.Module:
    """A frozen DiT of cfg's size with the given weights (a teacher or a generator)."""
    net = build_dit(cfg.net, latent_shape, num_classes, cfg.patch, cfg.pos)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def _tokenizer(run: PriorRun, state: dict, variational: bool = False):
    enc, dec = build_tokenizer(tuple(run.image_shape), run.latent_shape, run.cfg.dmvae.tokenizer,
                               variational=variational)
    enc.load_state_dict(state["encoder"])
    dec.load_state_dict(state["decoder"])
    return enc.to(D.device()).eval(), dec.to(D.device()).eval()


def _matching(run: PriorRun, ctx, prior, teacher, start: Start, encoder) -> dict:
    """Did q(z) reach p_r? Statistics of the start and final encoders on held-out images, of S_real's
    own samples, and the floor (two independent p_r draws), all against one fixed p_r draw
    (bench/metrics/matching.py), in p_r's normalised space."""
    ev, seed = run.cfg.eval, run.cfg.seed
    s_real, norm = teacher
    z_a, y_a = prior.sample(ev.match_n, torch.Generator().manual_seed(seed + 21))
    z_b, _ = prior.sample(ev.match_n, torch.Generator().manual_seed(seed + 22))
    matcher = matching.Matcher(norm.apply(z_a), seed=seed)
    x, _ = ctx.matching_images(ev.match_n)
    before = matcher.stats(norm.apply(encode(start.encoder, x)))
    after = matcher.stats(norm.apply(encode(encoder, x)))
    floor = matcher.floor(norm.apply(z_b))
    g = torch.Generator().manual_seed(seed + 23)
    noise = torch.randn(z_a.shape, generator=g).to(D.device())
    with torch.no_grad():  # S_real's own samples, with p_r's label mix: as close as DM can get
        z_teacher = sample_ode(s_real.to(D.device()), noise, y_a.to(D.device()), steps=ev.sample_steps).cpu()
    return {"before": before, "after": after, "floor": floor, "teacher_samples": matcher.stats(z_teacher),
            **matching.reached(before, after, floor),
            "space": "p_r's normalised latents; x = held-out images, reference = p_r draws",
            "start": run.start_kind}


def _evaluate(run: PriorRun, ctx, prior, tokenizer, generator, match) -> tuple[dict, dict]:
    """(figure data: t-SNE coordinates and image grids, metrics record) of the trained tokenizer and generator."""
    ev, seed = run.cfg.eval, run.cfg.seed
    enc, dec, _, hist = tokenizer
    model, cps, gen_record = generator
    norm = LatentNorm.from_dict(gen_record["norm"])  # the generator's latents are the DMVAE's, normalised
    images, _ = ctx.held_out
    ref = ctx.reference
    ctx.log(f"[{run.name}] evaluate: rFID-{ev.ref_n}, gFID-{ev.gfid_n} x {len(ev.seeds)} seeds, "
            f"{len(cps) - 1} convergence points, structure, t-SNE")
    total = ev.ref_n + ev.gfid_n * len(ev.seeds) + ev.convergence_n * (len(cps) - 1)
    progress = Progress(total, f"[{run.name} seed {run.tseed}] evaluate", ctx.log, every=30.0)
    rec, rec_grid = E.reconstruction(enc, dec, images, ref, ev, ctx.cache, progress=progress)
    k = ctx.data.num_classes
    gen, samples = E.generation(model, cps, dec, norm, k, run.cfg.generator, ctx.generation_reference, ev, ctx.cache,
                                log=ctx.log, keep=4 * k, progress=progress)  # 4 per class, label = column
    z_ref, y_ref = prior.sample(ev.structure_n, torch.Generator().manual_seed(seed))
    x_s, y_s = ctx.structure_images
    z_dm = encode_latents(enc, x_s, norm)
    z_ref = measure_norm(z_ref, "reference").apply(z_ref)  # standardised like every latent space here
    s_ref, t_ref = E.latent_structure(z_ref, y_ref, ev, seed)
    s_dm, t_dm = E.latent_structure(z_dm, y_s, ev, seed)
    record = {"rfid": rec["rfid"], "psnr": rec["psnr"], "ssim": rec["ssim"], "rfid_n": rec["n"],
              **gen, "structure": {"reference": s_ref, "dmvae": s_dm},
              "matching": None if match is None else match(),
              "generator_norm": norm.to_dict(), "training_seed": run.tseed,
              "tokenizer": {k: hist.get(k) for k in ("curve", "start", "loss_terms", "regulariser",
                                                      "tokenizer_updates")}}
    figures = {"reference_xy": t_ref["xy"], "reference_labels": t_ref["labels"],
               "dmvae_xy": t_dm["xy"], "dmvae_labels": t_dm["labels"],
               "recon_grid": rec_grid, "sample_grid": E.image_grid(samples, k)}
    return figures, record


def _guidance(run: PriorRun, ctx, tokenizer, generator) -> dict:
    """The guidance sweep's record (bench/study/guidance.py) of the trained tokenizer's decoder and generator."""
    ev = run.cfg.eval
    model, _, gen_record = generator
    real = G.RealSets(ctx.reference, ctx.held_out[1], ctx.floor_features, ctx.floor_images[1],
                      ctx.data.train.class_names, generation=ctx.generation_reference)
    ctx.log(f"[{run.name}] guidance sweep: CFG {', '.join(f'{w:g}' for w in ev.cfg_scales)}, gFID-{ev.gfid_n} x "
            f"{len(ev.seeds)} seeds each, per-class FID")
    progress = Progress(len(ev.cfg_scales) * len(ev.seeds) * ev.gfid_n, f"[{run.name} seed {run.tseed}] guidance",
                        ctx.log, every=30.0)
    return G.sweep(model, tokenizer[1], LatentNorm.from_dict(gen_record["norm"]), ctx.data.num_classes, real, ev,
                   ctx.cache, log=ctx.log, progress=progress)


def _strip_stage_fields(record: dict) -> dict:
    """A stage record as results.json carries it: without the stage store's bookkeeping (its time is in timings)."""
    return {k: v for k, v in record.items() if k not in ("key", "stage", "finished", "seconds")}


def _on_rank0(run: PriorRun, stages: PriorStages, stage: str, compute, upstream) -> tuple[dict, dict]:
    """Under torchrun: every rank loads (or trains, collectively) the upstream stages, then rank 0 computes
    `stage` (the evaluation, the guidance sweep) alone (samples are seeded per index, so the numbers do not
    depend on the world size) and the other ranks read its (state, record)."""
    store = stages.store
    if store.load(run.name, stage, run.keys[stage], tensors=False) is not None:
        return stages.run(stage, compute, collective=False)  # finished: every rank loads it
    for up in upstream:
        up()  # collective: barriers inside
    try:
        if D.rank() == 0:
            stages.run(stage, compute, collective=False)
    finally:
        D.barrier()
    store.recomputed.add((run.name, stage))  # rank 0's fresh output, also if forced
    hit = store.load(run.name, stage, run.keys[stage])
    if hit is None:
        raise RuntimeError(f"{stage} failed on rank 0 (see its message)")
    return hit
