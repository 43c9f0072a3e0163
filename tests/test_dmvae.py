"""The DMVAE stages (bench/dmvae): shapes, the coupled updates' invariants and schedule, the encoder
start, the KL baseline's budget, sampling independence."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bench.data import DataSpec, load_dataset
from bench.dmvae import (DMVAE_PRESETS, GENERATOR_PRESETS, PRETRAIN_PRESETS, STARTS, TOKENIZER_PRESETS,
                         DMVAEConfig, LatentNorm, PretrainConfig, TeacherConfig, baseline_budget, build_tokenizer,
                         encode_latents, generate, load_checkpoint, measure_norm, pretrain_autoencoder,
                         resolve_start, train_dmvae, train_generator, train_teacher, train_vae_baseline)
from bench.dmvae.autoencoder import LPIPS_STATUS, ReconstructionLoss, augment
from bench.core.dit import build_dit
from bench.metrics.matching import Matcher
from priors.analytic import Gaussian
from priors.base import PriorSettings
from priors.registry import get_prior

LATENT = (2, 4, 4)
TOK = dataclasses.replace(TOKENIZER_PRESETS["smoke"], gan_weight=0.0)  # fast: no discriminator


DATA = dict(resolution=16, limit=128)  # conftest.py's `data` fixture


@pytest.fixture(scope="module")
def prior(data):
    return Gaussian(PriorSettings(latent_channels=LATENT[0], latent_size=LATENT[1]), data).build()


@pytest.fixture(scope="module")
def teacher(prior):
    torch.manual_seed(0)
    cfg = TeacherConfig(net="P", patch=2, steps=200, batch=32, lr=1e-3, warmup=5, ema_decay=0.9,
                        norm_samples=512, log_every=0)
    stats = {}
    s_real, norm = train_teacher(prior, cfg, stats)
    return s_real, norm, stats


@pytest.fixture(scope="module")
def start(data):
    return pretrain_autoencoder(data.train.images, LATENT, PretrainConfig(steps=30, batch=16, log_every=0), TOK)


@pytest.fixture(scope="module")
def probe(data, prior, teacher):
    """Held-out images and a Matcher on p_r draws in p_r's normalised space, as bench/study/pipeline.py builds it."""
    _, norm, _ = teacher
    z_ref, _ = prior.sample(128, torch.Generator().manual_seed(11))
    return data.test.images[:128], Matcher(norm.apply(z_ref), seed=0)


def _recording_adamw(monkeypatch) -> tuple[list, list]:
    """torch.optim.AdamW replaced by a subclass that logs its steps (the stages build their optimisers
    as torch.optim.AdamW at call time). Returns (log, made): log has one (optimizer, its parameters
    changed, flat parameters of every optimizer made so far) per step; made lists the optimizers."""
    log, made = [], []

    def flat(opt):
        return torch.cat([p.detach().flatten() for g in opt.param_groups for p in g["params"]]).clone()

    class Recording(torch.optim.AdamW):
        def __init__(self, params, *args, **kwargs):
            super().__init__(list(params), *args, **kwargs)
            self.initial = flat(self)
            made.append(self)

        def step(self, closure=None):
            before = flat(self)
            out = super().step(closure)
            log.append((self, not torch.equal(before, flat(self)), {id(o): flat(o) for o in made}))
            return out

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    return log, made


def _optimizer_roles(made: list, s_fake) -> dict:
    """{"fake", "disc", "tok"}: which recorded optimizer is which (S_fake's holds the returned S_fake's
    parameters; the PatchGAN's has LDM's betas (0.5, 0.9); the tokenizer's is the remaining one)."""
    fake_ids = {id(p) for p in s_fake.parameters()}
    roles = {}
    for o in made:
        ids = {id(p) for g in o.param_groups for p in g["params"]}
        role = "fake" if ids == fake_ids else "disc" if tuple(o.defaults["betas"]) == (0.5, 0.9) else "tok"
        assert role not in roles, f"two optimizers look like {role}"
        roles[role] = o
    return roles


def _per_iteration(log: list, fake) -> list[list]:
    """The logged steps split into iterations: S_fake steps exactly once, last, in every iteration."""
    iters, cur = [], []
    for entry in log:
        cur.append(entry)
        if entry[0] is fake:
            iters.append(cur)
            cur = []
    assert not cur, "steps after the last S_fake step"
    return iters


# ------------------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("image,latent", [((3, 16, 16), (2, 4, 4)), ((1, 32, 32), (4, 8, 8))])
def test_tokenizer_shapes(image, latent):
    enc, dec = build_tokenizer(image, latent, TOKENIZER_PRESETS["smoke"])
    x = torch.randn(2, *image)
    z = enc(x)
    assert z.shape == (2, *latent) and dec(z).shape == x.shape
    venc, _ = build_tokenizer(image, latent, TOKENIZER_PRESETS["smoke"], variational=True)
    mean, logvar = venc.posterior(x)
    assert mean.shape == logvar.shape == (2, *latent) and torch.equal(venc(x), mean)
    d = ReconstructionLoss(image[0], TOKENIZER_PRESETS["smoke"]).disc
    assert d(x).shape[:2] == (2, 1)


def test_augment_is_differentiable_and_keeps_shape():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = augment(x, 0.125, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_adaptive_gan_weight_is_half_the_gradient_norm_ratio():
    loss = ReconstructionLoss(3, TOKENIZER_PRESETS["smoke"])
    w = torch.randn(3, 3, requires_grad=True)
    rec, gan = (w ** 2).sum(), (3 * w).sum()
    expected = 0.5 * (2 * w).norm() / ((3 * torch.ones(3, 3)).norm() + 1e-4)
    assert torch.allclose(loss.adaptive_weight(rec, gan, w), expected.detach())


def test_loss_terms_record():
    assert ReconstructionLoss(3, TOKENIZER_PRESETS["smoke"]).loss_terms() == {
        "l1": True, "l2": True, "gan": True, "lpips": LPIPS_STATUS}
    assert ReconstructionLoss(3, TOK).loss_terms()["gan"] is False
    assert LPIPS_STATUS.startswith("unavailable")


@pytest.mark.slow
def test_reference_ae_start_distils_the_reference_encoder(data):
    """With a reference encoder (images -> latents) the start is "reference-ae": its encoder lands near
    the reference latents, the plain AE's does not (both trained alike, same seed)."""
    x = data.train.images[:64]
    w = torch.randn(LATENT[0], x.shape[1], generator=torch.Generator().manual_seed(3))
    calls = []

    def reference(images):  # a frozen "image encoder": a fixed per-pixel linear map of the pooled image
        calls.append(len(images))
        return 2 * torch.einsum("oc,nchw->nohw", w, F.adaptive_avg_pool2d(images, LATENT[1:]))

    cfg = PretrainConfig(steps=40, batch=8, lr=3e-3, distill_weight=10.0, distill_images=48, log_every=0)
    plain = pretrain_autoencoder(x, LATENT, cfg, TOK)
    distilled = pretrain_autoencoder(x, LATENT, cfg, TOK, reference=reference)
    assert calls == [48]  # the reference latents of distill_images images, computed once
    assert plain.record["kind"] == "plain-ae" and distilled.record["kind"] == "reference-ae"
    assert not plain.record["loss_terms"]["distill"] and "distill_mse" not in plain.record["final"]
    assert distilled.record["loss_terms"]["distill"] and "distill_mse" in distilled.record["final"]
    assert "distilled_from" in distilled.record and "distilled_from" not in plain.record
    with torch.no_grad():
        for images in (x, data.test.images[:64]):  # train images, and held-out ones it never saw
            target = reference(images)
            err = [F.mse_loss(s.encoder(images), target).item() for s in (plain, distilled)]
            assert err[1] < 0.5 * err[0], err


def test_resolve_start_follows_section_3_3(prior):
    """auto: reference-ae for a prior with an image encoder, plain-ae otherwise; plain-ae is always allowed."""
    assert STARTS == ("auto", "plain-ae", "reference-ae")
    expected = {"dino": True, "resnet": True, "subdino": True, "noise": True, "vae": True,
                "gaussian": False, "gmm": False, "text": False}
    for name, has in expected.items():
        cls = get_prior(name)
        assert cls.has_image_encoder is has, name
        assert resolve_start("auto", cls) == ("reference-ae" if has else "plain-ae"), name
        assert resolve_start("plain-ae", cls) == "plain-ae", name
        if has:
            assert resolve_start("reference-ae", cls) == "reference-ae", name
    assert resolve_start("auto", prior) == "plain-ae"  # a built instance works as well as its class
    with pytest.raises(ValueError, match="'text' has no image encoder"):
        resolve_start("reference-ae", get_prior("text"))
    with pytest.raises(ValueError, match="start must be one of auto, plain-ae, reference-ae"):
        resolve_start("distill", get_prior("dino"))


# ------------------------------------------------------------------------------ latent norm
def test_latent_norm_round_trip_and_measure():
    z = 3 + 2 * torch.randn(4096, *LATENT)
    norm = measure_norm(z, "test")
    zn = norm.apply(z)
    assert abs(zn.mean().item()) < 1e-5 and abs(zn.std().item() - 1) < 1e-5
    assert torch.allclose(norm.invert(zn), z, atol=1e-5)
    assert LatentNorm.from_dict(norm.to_dict()) == norm


# ------------------------------------------------------------------------------ teacher + DM stage
def test_teacher_is_frozen_and_norm_comes_from_the_prior(teacher):
    s_real, norm, stats = teacher
    assert not any(p.requires_grad for p in s_real.parameters()) and not s_real.training
    assert "gaussian" in norm.measured_on and abs(norm.scale - 1) < 0.1
    assert stats["final_loss"] < 2.0  # an untrained net (v = 0) scores E|x - eps|^2 = 2


def test_s_fake_starts_equal_to_s_real(data, prior, teacher, start):
    s_real, norm, _ = teacher
    cfg = DMVAEConfig(steps=0, tokenizer=TOK)
    _, _, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start)
    real, fake = s_real.state_dict(), s_fake.state_dict()
    assert real.keys() == fake.keys() and all(torch.equal(real[k], fake[k]) for k in real)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(s_real.parameters(), s_fake.parameters()))
    assert hist["start"]["kind"] == "plain-ae"
    assert hist["tokenizer_updates"] == hist["fake_updates"] == 0 and hist["curve"] == []  # no probe given


def test_no_gradient_reaches_s_real_and_history_records(data, prior, teacher, start):
    s_real, norm, _ = teacher
    before = {k: v.clone() for k, v in s_real.state_dict().items()}
    cfg = dataclasses.replace(DMVAE_PRESETS["smoke"], steps=4, dm_every=1, log_every=2,
                              tokenizer=dataclasses.replace(DMVAE_PRESETS["smoke"].tokenizer, gan_start=0))
    enc, dec, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg,
                                         start)
    assert all(p.grad is None and not p.requires_grad for p in s_real.parameters())
    assert all(torch.equal(before[k], v) for k, v in s_real.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in s_fake.state_dict().items())  # S_fake trained
    assert [r["step"] for r in hist["losses"]] == [2, 4]
    assert {"rec", "dm", "fake", "d", "gan_weight"} <= hist["losses"][0].keys()
    assert hist["loss_terms"] == {"l1": True, "l2": True, "gan": True, "lpips": LPIPS_STATUS}
    assert hist["tokenizer_updates"] == hist["fake_updates"] == 4 and "dm_score" not in hist
    assert hist["regulariser"]["dm_every"] == 1 and hist["norm"] == norm.to_dict()
    assert enc(data.train.images[:2]).shape == (2, *LATENT)


def test_schedule_tokenizer_every_kth_iteration_s_fake_every_iteration(monkeypatch, data, prior, teacher, start):
    """dm_every = 3 over 8 iterations: E and G take one step (and change) on iterations 0, 3, 6 only;
    S_fake takes one step, and changes, on every iteration, after the tokenizer's."""
    s_real, norm, _ = teacher
    log, made = _recording_adamw(monkeypatch)
    cfg = DMVAEConfig(steps=8, batch=8, warmup=2, dm_every=3, tokenizer=TOK, log_every=1)
    _, _, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start)
    roles = _optimizer_roles(made, s_fake)
    assert set(roles) == {"tok", "fake"}  # TOK has no GAN: no discriminator optimiser
    tok, fake = roles["tok"], roles["fake"]
    iters = _per_iteration(log, fake)
    assert len(iters) == 8
    turns = [0, 3, 6]
    assert [i for i, steps in enumerate(iters) if any(o is tok for o, _, _ in steps)] == turns
    assert [[o is tok for o, _, _ in steps] for steps in iters] == [[True, False] if i in turns else [False]
                                                                     for i in range(8)]
    # the tokenizer's parameters, read at the end of every iteration: they change on the turns only
    at_end = [tok.initial] + [steps[-1][2][id(tok)] for steps in iters]
    assert [i for i in range(8) if not torch.equal(at_end[i], at_end[i + 1])] == turns
    # S_fake's parameters change on every iteration
    assert [changed for o, changed, _ in log if o is fake] == [True] * 8
    assert hist["tokenizer_updates"] == len(turns) and hist["fake_updates"] == 8
    assert ["dm" in row for row in hist["losses"]] == [i in turns for i in range(8)]  # log_every = 1
    assert all("fake" in row for row in hist["losses"])


def test_discriminator_steps_only_from_gan_start(monkeypatch, data, prior, teacher, start):
    """gan_start = 4, dm_every = 2: the tokenizer turns are 0, 2, 4, 6, 8 and the PatchGAN steps right
    after the turns 4, 6 and 8; with steps <= gan_start it never steps and the GAN is not recorded as used."""
    s_real, norm, _ = teacher
    gan_tok = dataclasses.replace(TOKENIZER_PRESETS["smoke"], gan_start=4)
    log, made = _recording_adamw(monkeypatch)
    cfg = DMVAEConfig(steps=9, batch=8, warmup=2, dm_every=2, tokenizer=gan_tok, log_every=1)
    _, _, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start)
    roles = _optimizer_roles(made, s_fake)
    iters = _per_iteration(log, roles["fake"])
    names = {id(o): r for r, o in roles.items()}
    assert [[names[id(o)] for o, _, _ in steps] for steps in iters] == [
        ["tok", "fake"], ["fake"], ["tok", "fake"], ["fake"], ["tok", "disc", "fake"], ["fake"],
        ["tok", "disc", "fake"], ["fake"], ["tok", "disc", "fake"]]
    assert all(changed for o, changed, _ in log if o is roles["disc"])
    assert [i for i, row in enumerate(hist["losses"]) if "d" in row] == [4, 6, 8]
    assert [i for i, row in enumerate(hist["losses"]) if "gan_weight" in row] == [4, 6, 8]  # G's GAN term too
    assert hist["loss_terms"]["gan"] is True

    log.clear()
    made.clear()
    _, _, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm,
                                     dataclasses.replace(cfg, steps=4), start)
    roles = _optimizer_roles(made, s_fake)
    assert not any(o is roles["disc"] for o, _, _ in log)
    assert hist["loss_terms"]["gan"] is False and not any("d" in row for row in hist["losses"])


# 150 iterations, dm_every = 5: 30 tokenizer turns; S_fake (lr 3e-3) steps on all 150 iterations.
MOVE = DMVAEConfig(steps=150, batch=16, lr=1e-3, fake_lr=3e-3, warmup=5, ema_decay=0.0, probe_every=50,
                   probe_n=128, tokenizer=TOK, log_every=0)


def test_gan_is_recorded_as_used_only_if_a_turn_reached_gan_start(monkeypatch, data, prior, teacher, start):
    s_real, norm, _ = teacher
    log, made = _recording_adamw(monkeypatch)
    cfg = DMVAEConfig(steps=9, batch=8, warmup=2, dm_every=5, log_every=0,
                      tokenizer=dataclasses.replace(TOKENIZER_PRESETS["smoke"], gan_start=6))
    _, _, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start)
    assert not any(o is _optimizer_roles(made, s_fake)["disc"] for o, _, _ in log)  # D never stepped ...
    assert hist["loss_terms"]["gan"] is False  # ... so the record must not say the GAN term was used


@pytest.mark.slow
def test_dm_stage_moves_latents_towards_the_prior(data, prior, teacher, start, probe):
    """Gaussian prior: both matching statistics of the curve end well below the start encoder's."""
    s_real, norm, _ = teacher
    _, _, _, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, MOVE, start, probe=probe)
    assert [p["step"] for p in hist["curve"]] == [0, 50, 100, 150]
    assert all({"mmd2", "sliced_w2", "n", "n_ref"} <= p.keys() and "c2st_acc" not in p for p in hist["curve"])
    before, after = hist["curve"][0], hist["curve"][-1]
    # measured (seeds 0, 1, 2): mmd2 0.079 -> 0.049, 0.035, 0.050; sliced W2 0.77 -> 0.46, 0.39, 0.45.
    # Reconstruction alone (dm_weight = 0) ends at mmd2 0.067, 0.064, 0.071 and sliced W2 0.65, 0.66, 0.68:
    # both bounds are out of its reach.
    assert after["mmd2"] < 0.75 * before["mmd2"]
    assert after["sliced_w2"] < 0.7 * before["sliced_w2"]


@pytest.mark.slow
def test_dm_beats_reconstruction_alone(data, prior, teacher, start, probe):
    s_real, norm, _ = teacher
    scores = {}
    for w in (0.0, 10.0):
        cfg = dataclasses.replace(MOVE, dm_weight=w)
        _, _, _, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start,
                                    probe=probe)
        scores[w] = hist["curve"][-1]
    assert scores[10.0]["sliced_w2"] < scores[0.0]["sliced_w2"]
    assert scores[10.0]["mmd2"] < scores[0.0]["mmd2"]


def test_non_finite_loss_raises_naming_step_and_stage(data, prior, teacher, start):
    s_real, norm, _ = teacher
    images = data.train.images.clone()
    images[:] = float("nan")
    cfg = DMVAEConfig(steps=3, tokenizer=TOK)
    with pytest.raises(RuntimeError, match=r"DM stage: .*non-finite loss .* at step 0"):
        train_dmvae(images, data.train.labels, prior, s_real, norm, cfg, start)


def test_vae_baseline_runs_with_kl_and_its_own_norm(data):
    cfg = dataclasses.replace(DMVAE_PRESETS["smoke"], steps=3, log_every=3)
    pretrain = PretrainConfig(steps=2)
    enc, dec, norm, hist = train_vae_baseline(data.train.images, data.train.labels, LATENT, cfg, pretrain)
    assert enc.variational and "vae baseline" in norm.measured_on
    assert hist["regulariser"]["kind"].startswith("KL") and "kl" in hist["losses"][-1]
    assert "dm_score" not in hist and "curve" not in hist
    assert hist["tokenizer_updates"] == 3 and [r["step"] for r in hist["losses"]] == [3]  # 2 + ceil(3 / 5)
    # reproducible whatever ran before it in the process (it once started from the global RNG's state)
    torch.rand(1000)
    enc2, *_ = train_vae_baseline(data.train.images, data.train.labels, LATENT, cfg, pretrain)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), enc2.state_dict().values()))


@pytest.mark.parametrize("steps, every, pre, gan_start", [(40, 5, 20, 20), (7, 3, 2, 4), (1, 5, 0, 0),
                                                          (1500, 5, 300, 750), (300_000, 5, 5000, 5000)])
def test_vae_baseline_budget_is_a_dm_rows_tokenizer_updates(steps, every, pre, gan_start):
    """The KL baseline gets the encoder start's steps plus the DM stage's tokenizer turns, and its GAN
    starts after as many tokenizer updates as in a DM row."""
    cfg = DMVAEConfig(steps=steps, dm_every=every, tokenizer=dataclasses.replace(TOK, gan_start=gan_start))
    updates, gan = baseline_budget(cfg, PretrainConfig(steps=pre))
    assert updates == pre + math.ceil(steps / every)
    assert updates == pre + len(range(0, steps, every))  # the DM stage's turns, i % every == 0
    assert gan == pre + len(range(0, gan_start, every))  # DM-row turns before the GAN starts


def test_vae_baseline_trains_exactly_its_budget(monkeypatch, data):
    """7 iterations at dm_every = 3 and a 2-step start: 2 + 3 = 5 tokenizer updates; a DM row's GAN from
    iteration 4 (turns 0, 3 before it) becomes update 2 + 2 = 4 here, so D steps once (update 4)."""
    log, made = _recording_adamw(monkeypatch)
    cfg = DMVAEConfig(steps=7, batch=8, warmup=1, dm_every=3, log_every=1,
                      tokenizer=dataclasses.replace(TOKENIZER_PRESETS["smoke"], gan_start=4))
    pretrain = PretrainConfig(steps=2)
    assert baseline_budget(cfg, pretrain) == (5, 4)
    _, _, _, hist = train_vae_baseline(data.train.images, data.train.labels, LATENT, cfg, pretrain)
    disc = [o for o in made if tuple(o.defaults["betas"]) == (0.5, 0.9)]
    tok = [o for o in made if o not in disc]
    assert len(disc) == len(tok) == 1
    assert sum(o is tok[0] for o, _, _ in log) == 5 and sum(o is disc[0] for o, _, _ in log) == 1
    assert hist["tokenizer_updates"] == 5 and hist["gan_start"] == 4 and hist["loss_terms"]["gan"] is True
    assert [i for i, row in enumerate(hist["losses"]) if "d" in row] == [4]


# ------------------------------------------------------------------------------ generator
def test_generator_checkpoints_at_fractions(data):
    lat = torch.randn(64, *LATENT)
    model, ckpts, hist = train_generator(lat, data.train.labels[:64], data.num_classes, GENERATOR_PRESETS["smoke"])
    assert [c["step"] for c in ckpts] == [10, 20] and [c["fraction"] for c in ckpts] == [0.5, 1.0]
    assert ckpts[-1]["epoch"] == pytest.approx(20 * 16 / 64)
    last = load_checkpoint(ckpts[-1], LATENT, data.num_classes, GENERATOR_PRESETS["smoke"])
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values()))


def test_generate_is_independent_of_batch_size_and_shard():
    torch.manual_seed(0)
    model = build_dit("P", LATENT, num_classes=3, patch_size=2)
    for p in model.parameters():  # the zero-initialised head would make v = 0: randomise everything
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    _, dec = build_tokenizer((1, 16, 16), LATENT, TOKENIZER_PRESETS["smoke"])
    norm = LatentNorm(mean=0.1, scale=2.0)
    a, ya = generate(model, 8, 3, seed=7, steps=4, cfg=2.0, batch_size=4)
    b, yb = generate(model, 8, 3, seed=7, steps=4, cfg=2.0, batch_size=8)
    c, _ = generate(model, 4, 3, seed=7, steps=4, cfg=2.0, first=4, batch_size=3)  # a second "rank"
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[4:], c, atol=1e-5)
    assert ya.tolist() == yb.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert not torch.allclose(a, generate(model, 8, 3, seed=8, steps=4, cfg=2.0)[0])
    img, _ = generate(model, 5, 3, seed=7, steps=4, decoder=dec, norm=norm, batch_size=2)
    assert img.shape == (5, 1, 16, 16) and img.abs().max() <= 1


def test_encode_latents_applies_the_norm(data, start):
    norm = LatentNorm(mean=0.5, scale=3.0)
    z = encode_latents(start.encoder, data.train.images[:8], norm)
    with torch.no_grad():
        raw = start.encoder(data.train.images[:8])
    assert torch.allclose(z, (raw - 0.5) * 3.0, atol=1e-5)


def test_presets_have_the_same_keys():
    assert PRETRAIN_PRESETS.keys() <= DMVAE_PRESETS.keys()
    assert {"smoke", "cpu"} <= GENERATOR_PRESETS.keys() & DMVAE_PRESETS.keys()


def test_dm_stage_resumes_to_the_same_weights_and_leaves_the_start_alone(tmp_path, data, prior, teacher, start,
                                                                         probe):
    s_real, norm, _ = teacher
    start_weights = {k: v.clone() for k, v in start.encoder.state_dict().items()}
    cfg = dataclasses.replace(DMVAE_PRESETS["smoke"], steps=6, dm_every=2, probe_every=2, log_every=2)
    ref = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start, probe=probe)
    assert [p["step"] for p in ref[3]["curve"]] == [0, 2, 4, 6]
    ckpt = tmp_path / "dm"
    # a first run that saves at step 3 and then "dies": its result is thrown away
    train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, dataclasses.replace(cfg, steps=6),
                start, probe=probe, checkpoint=ckpt, checkpoint_every=3)
    assert (tmp_path / "dm.json").is_file()
    enc, dec, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, start,
                                         probe=probe, checkpoint=ckpt, checkpoint_every=3)
    for a, b in [(ref[0], enc), (ref[1], dec), (ref[2], s_fake)]:
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert hist["losses"] == [{**r, "seconds": hist["losses"][i]["seconds"]} for i, r in enumerate(ref[3]["losses"])]
    assert hist["curve"] == ref[3]["curve"]  # the probes before the kill come back from the checkpoint
    assert all(torch.equal(v, start.encoder.state_dict()[k]) for k, v in start_weights.items())


def test_generator_resumes_with_its_checkpoints(tmp_path, data):
    lat, y = torch.randn(64, *LATENT), data.train.labels[:64]
    cfg = GENERATOR_PRESETS["smoke"]
    model, ckpts, _ = train_generator(lat, y, data.num_classes, cfg)
    train_generator(lat, y, data.num_classes, cfg, checkpoint=tmp_path / "g", checkpoint_every=15)
    model2, ckpts2, hist = train_generator(lat, y, data.num_classes, cfg, checkpoint=tmp_path / "g",
                                           checkpoint_every=15)
    assert hist["resumed_from"] == 15 and [c["step"] for c in ckpts2] == [10, 20]
    for a, b in zip(ckpts + [{"state_dict": model.state_dict()}], ckpts2 + [{"state_dict": model2.state_dict()}]):
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


# ------------------------------------------------------------------------------ data parallel
def _train_every_stage() -> list[float]:
    """Checksums of every net the stages train, on a tiny synthetic set (the GAN term active)."""
    data = load_dataset(DataSpec("synthetic", 16, limit=32))
    prior = Gaussian(PriorSettings(latent_channels=LATENT[0], latent_size=LATENT[1]), data).build()
    s_real, norm = train_teacher(prior, dataclasses.replace(TeacherConfig(), steps=3, batch=8, log_every=0))
    st = pretrain_autoencoder(data.train.images, LATENT, PretrainConfig(steps=2, batch=8, log_every=0), TOK)
    cfg = dataclasses.replace(DMVAE_PRESETS["smoke"], steps=3, dm_every=1,
                              tokenizer=TOKENIZER_PRESETS["smoke"])  # with the GAN term (gan_start 0)
    enc, dec, s_fake, hist = train_dmvae(data.train.images, data.train.labels, prior, s_real, norm, cfg, st)
    assert hist["loss_terms"]["gan"]
    vae_enc, vae_dec, _, _ = train_vae_baseline(data.train.images, data.train.labels, LATENT,
                                                dataclasses.replace(cfg, steps=2), PretrainConfig(steps=0))
    gen, _, _ = train_generator(torch.randn(32, *LATENT, generator=torch.Generator().manual_seed(5)),
                                data.train.labels, data.num_classes, dataclasses.replace(GENERATOR_PRESETS["smoke"], steps=3))
    return [float(sum(p.detach().double().sum() for p in m.parameters())) for m in (s_real, enc, dec, s_fake, vae_enc, gen)]


def _ddp_worker(rank, port, out):
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from bench import distributed as D
    D.init()
    out[rank] = _train_every_stage()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_nets_as_one_process():
    """Batches AND noise are drawn for the global batch and sharded (bench/core/noise.py), so two
    ranks train what one process trains, up to float summation order."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, out), nprocs=2, join=True)
    assert out[0] == out[1]  # the ranks stay in sync exactly
    single = _train_every_stage()
    # Not bit-exact: the gradient of a mean over 8 rows differs from the mean of two 4-row means in
    # the last bits, and Adam's first steps (update ~ lr * sign(g)) turn that into +-lr on the few
    # weights whose gradient is ~0 (measured: 24 decoder weights, at most 4.3e-4, with or without
    # the GAN term). Per-rank noise, as before bench/core/noise.py, changes every weight.
    assert out[0] == pytest.approx(single, rel=1e-4)
