"""Experiment logging (bench/tracking.py): TensorBoard event files and wandb runs per stage, off the critical
path (bit-identical weights with logging on and off, a failing sink only warns, rank 0 alone writes)."""
import dataclasses
import functools
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from bench import distributed as D
from bench.data import DataSpec, load_dataset
from bench.dmvae import (DMVAE_PRESETS, GENERATOR_PRESETS, TOKENIZER_PRESETS, PretrainConfig, TeacherConfig,
                         pretrain_autoencoder, train_dmvae, train_generator, train_teacher, train_vae_baseline)
from bench.tracking import LogConfig, Tracker
from priors.analytic import Gaussian
from priors.base import PriorSettings

LATENT = (2, 4, 4)
EVERY = 2  # log.every, equal to the loops' own log_every below: the points are the history's rows
STAGE_TAGS = {  # what each stage writes (the smoke DM stage with its GAN term on)
    "teacher": {"loss", "lr", "grad_norm", "img_per_s"},
    "start": {"loss/rec", "lr", "grad_norm", "img_per_s"},
    "dmvae": {"loss/dm", "loss/rec", "loss/l1", "loss/l2", "loss/gan", "loss/gan_weight", "loss/d", "loss/fake",
              "lr/tokenizer", "lr/s_fake", "grad_norm/tokenizer", "grad_norm/s_fake", "img_per_s"},
    "vae": {"loss/kl", "loss/rec", "loss/l1", "loss/l2", "loss/gan", "loss/gan_weight", "loss/d", "lr", "grad_norm",
            "img_per_s"},
    "generator": {"loss", "lr", "grad_norm", "img_per_s"},
}


class FakeWandb(types.ModuleType):
    """Stands in for the wandb package: records init / log / finish."""

    def __init__(self):
        super().__init__("wandb")
        self.runs = []

    def init(self, **kwargs):
        self.runs.append(FakeRun(kwargs))
        return self.runs[-1]


class FakeRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.exit_code = kwargs, [], None

    def log(self, data, step):
        self.logged.append((step, dict(data)))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


class ListSink:
    """A sink that keeps what it is given (for the tracker's own tests)."""

    name = "list"

    def __init__(self, first, fail_on=None):
        self.first, self.points, self.closed, self.fail_on = first, [], None, fail_on

    def write(self, step, scalars):
        if self.fail_on == "write":
            raise OSError("disk full")
        self.points.append((step, scalars))

    def close(self, failed=False):
        self.closed = failed


def _every_stage(track=lambda stage: None) -> tuple[dict, dict]:
    """Every training loop at smoke scale on a tiny synthetic set: (state dicts of every trained net, histories)."""
    data = load_dataset(DataSpec("synthetic", 16, limit=32))
    prior = Gaussian(PriorSettings(latent_channels=LATENT[0], latent_size=LATENT[1]), data).build()
    s_real, norm = train_teacher(prior, dataclasses.replace(TeacherConfig(), steps=4, batch=8, log_every=0),
                                 track=track("teacher"))
    tok = TOKENIZER_PRESETS["smoke"]  # with the GAN term, from step 0
    st = pretrain_autoencoder(data.train.images, LATENT, PretrainConfig(steps=4, batch=8, log_every=0), tok,
                              track=track("start"))
    cfg = dataclasses.replace(DMVAE_PRESETS["smoke"], steps=6, dm_every=2, log_every=EVERY, probe_every=0,
                              tokenizer=tok)
    enc, dec, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, st,
                                         track=track("dmvae"))
    vae_enc, vae_dec, _, vae_hist = train_vae_baseline(data.train.images, data.train.labels, LATENT,
                                                       dataclasses.replace(cfg, steps=2), PretrainConfig(steps=2),
                                                       track=track("vae"))
    gen, _, gen_hist = train_generator(torch.randn(32, *LATENT, generator=torch.Generator().manual_seed(5)),
                                       data.train.labels, data.num_classes,
                                       dataclasses.replace(GENERATOR_PRESETS["smoke"], steps=4, log_every=EVERY),
                                       track=track("generator"))
    nets = {"teacher": s_real, "start": st.encoder, "enc": enc, "dec": dec, "s_fake": s_fake, "vae_enc": vae_enc,
            "vae_dec": vae_dec, "generator": gen}
    return ({k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in nets.items()},
            {"dmvae": hist, "vae": vae_hist, "generator": gen_hist})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The stages trained with logging off, then with TensorBoard and a fake wandb on."""
    out = tmp_path_factory.mktemp("logged")
    off = _every_stage()
    fake = FakeWandb()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "wandb", fake)
        cfg = LogConfig(tensorboard=True, wandb="dmvae-test", every=EVERY)  # checks that wandb is importable
        on = _every_stage(lambda stage: Tracker.for_stage(cfg, out, "gaussian", 0, stage, {"seed": 0}))
    return out, off, on, fake


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a TensorBoard event folder, read back with tensorboard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow  # every training loop twice, and tensorboard's import (~10 s on 2 shared cores)
def test_logging_leaves_every_trained_weight_bit_identical(logged):
    _, off, on, _ = logged
    assert off[0].keys() == on[0].keys()
    for net, state in off[0].items():
        assert all(torch.equal(t, on[0][net][k]) for k, t in state.items()), net
    for stage, hist in off[1].items():  # the recorded histories too (their wall-clock seconds aside)
        strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h["losses"]]  # noqa: E731
        assert strip(hist) == strip(on[1][stage]), stage


@pytest.mark.slow  # shares the module's training
@pytest.mark.parametrize("stage", list(STAGE_TAGS))
def test_tensorboard_event_files_per_stage_hold_the_expected_scalars(logged, stage):
    out, _, on, _ = logged
    series = _scalars(out / "tensorboard" / "gaussian" / "seed0" / stage)
    assert set(series) == STAGE_TAGS[stage]
    assert all(v > 0 and np.isfinite(v) for _, v in series["img_per_s"])
    if stage in on[1]:  # the loops that record windowed loss rows: the same points, the same means
        rows = on[1][stage]["losses"]
        for tag in (t for t in series if t == "loss" or t.startswith("loss/")):
            key = tag.split("/")[-1]
            want = [(r["step"], np.float32(r[key])) for r in rows if key in r]
            assert [(s, np.float32(v)) for s, v in series[tag]] == want, tag


@pytest.mark.slow  # shares the module's training
def test_wandb_gets_one_run_per_stage_with_the_same_points(logged):
    out, _, _, fake = logged
    assert [r.kwargs["name"] for r in fake.runs] == [f"gaussian/seed0/{s}" for s in STAGE_TAGS]
    for run in fake.runs:
        stage = run.kwargs["job_type"]
        assert run.kwargs["project"] == "dmvae-test" and run.kwargs["group"] == "gaussian/seed0"
        assert run.kwargs["config"] == {"seed": 0, "prior": "gaussian", "training_seed": 0, "stage": stage}
        assert run.exit_code == 0 and {k for _, d in run.logged for k in d} == STAGE_TAGS[stage]
        tb = _scalars(out / "tensorboard" / "gaussian" / "seed0" / stage)
        for tag, series in tb.items():
            assert [(s, np.float32(d[tag])) for s, d in run.logged if tag in d] == series, (stage, tag)


def test_a_generator_loop_logs_its_history_and_trains_the_same(data):
    """The fast lane's check on a real loop (without tensorboard): same weights, points = the history's rows."""
    lat, y = torch.randn(64, *LATENT, generator=torch.Generator().manual_seed(1)), data.train.labels[:64]
    cfg = dataclasses.replace(GENERATOR_PRESETS["smoke"], steps=6, log_every=3)
    ref, _, ref_hist = train_generator(lat, y, data.num_classes, cfg)
    track, sinks = _tracker(every=3)
    model, _, hist = train_generator(lat, y, data.num_classes, cfg, track=track)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    sink, = sinks
    assert [(s, p["loss"]) for s, p in sink.points] == [(r["step"], r["loss"]) for r in hist["losses"]]
    assert [r["loss"] for r in hist["losses"]] == [r["loss"] for r in ref_hist["losses"]]
    assert all(p["lr"] > 0 and p["grad_norm"] > 0 and p["img_per_s"] > 0 for _, p in sink.points)
    assert sink.closed is False  # closed, and not as a failure


def _named(make, name="list"):
    """A sink constructor as the tracker expects one (it names a sink that fails to start by make.func.name)."""
    part = functools.partial(make)
    part.func.name = name
    return part


def _tracker(every=2, **sink_kw) -> tuple[Tracker, list]:
    made = []

    def open_sinks(first):
        def make():
            made.append(ListSink(first, **sink_kw))
            return made[-1]
        return [_named(make)]
    return Tracker(open_sinks, every, "gaussian/seed0/test"), made


def test_points_are_means_over_their_steps_and_the_last_step_is_written():
    track, made = _tracker(every=2)
    with track.session(0, 5, batch=4):
        for done, (loss, extra) in enumerate([(1.0, None), (3.0, 10.0), (5.0, None), (7.0, None), (9.0, 2.0)], 1):
            track.step(done, loss={"a": loss, "b": extra}, grad_norm=torch.tensor(float(done)))
    sink, = made
    assert [s for s, _ in sink.points] == [2, 4, 5]
    assert [(p["loss/a"], p.get("loss/b"), p["grad_norm"]) for _, p in sink.points] == [
        (2.0, 10.0, 1.5), (6.0, None, 3.5), (9.0, 2.0, 5.0)]  # b averages over the steps that had it
    assert all(p["img_per_s"] > 0 for _, p in sink.points) and sink.closed is False


def test_off_by_default_and_on_other_ranks_nothing_is_opened(monkeypatch):
    assert Tracker.for_stage(LogConfig(), "unused", "gaussian", 0, "teacher").open_sinks is None
    off = Tracker()
    with off.session(0, 3, 4):
        off.step(1, loss=1.0)  # no sinks, no work
    track, made = _tracker()
    monkeypatch.setattr(D, "rank", lambda: 1)
    with track.session(0, 2, 4):
        track.step(1, loss=1.0)
        track.step(2, loss=1.0)
    assert made == []


def test_a_failing_sink_warns_once_and_training_goes_on():
    track, made = _tracker(every=1, fail_on="write")
    with pytest.warns(RuntimeWarning, match="list could not write for gaussian/seed0/test .*disk full.*goes on") as w:
        with track.session(0, 4, 4):
            for done in range(1, 5):
                track.step(done, loss=1.0)
    assert len(w) == 1 and made[0].closed is None  # dropped after the first failure: not even closed

    def cannot_start():
        raise RuntimeError("no network")
    track = Tracker(lambda first: [_named(cannot_start, "wandb")], 1, "gaussian/seed0/test")
    with pytest.warns(RuntimeWarning, match="wandb could not start .*no network"):
        with track.session(0, 2, 4):
            track.step(1, loss=1.0)


def test_a_failed_stage_closes_its_sinks_as_failed():
    track, made = _tracker()
    with pytest.raises(ValueError), track.session(0, 4, 4):
        track.step(1, loss=1.0)
        raise ValueError("non-finite loss")
    assert made[0].closed is True


@pytest.mark.slow  # imports tensorboard (~5 s on 2 shared cores)
def test_a_resumed_stage_replaces_the_points_after_its_checkpoint(tmp_path):
    cfg = LogConfig(tensorboard=True, every=1)
    for first, value in ((0, 1.0), (2, 2.0)):  # a run killed after step 4 with a checkpoint at step 2, resumed
        track = Tracker.for_stage(cfg, tmp_path, "gaussian", 0, "teacher")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no sink may fail here
            with track.session(first, 4, 8):
                for done in range(first + 1, 5):
                    track.step(done, loss=value)
    series = _scalars(tmp_path / "tensorboard" / "gaussian" / "seed0" / "teacher")
    assert series["loss"] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
