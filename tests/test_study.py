"""The study runner (bench/study): results contract, cached re-runs, failures, presets, CLI input,
training seeds (config, stage keys, aggregation)."""
import dataclasses
import json
import math
import shutil
import time
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import resolve
from bench.runlock import RunLock
from bench.study import pipeline
from bench.study.aggregate import aggregate
from bench.study.config import STUDY_PRESETS, StudyConfig

# The smoke preset on the synthetic set, with the Inception metrics at N = 10 (Inception runs at a
# few images per second on a shared 2-core machine; the smoke preset's own N = 50 is for the CLI).
FAST = ["--preset", "smoke", "--dataset", "synthetic", "--set", "eval.ref_n=10", "--set", "eval.gfid_n=10",
        "--set", "eval.convergence_n=10", "--set", "eval.structure_n=60", "--set", "eval.tsne_per_class=5",
        "--set", "eval.sample_steps=4"]
STAGES = {"prior", "teacher", "start", "dmvae", "generator", "evaluate"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("study")
    t0 = time.time()
    rc = main([*FAST, "--priors", "gaussian,gmm,vae", "--out", str(out), "--cache-dir", cache])
    return out, rc, json.loads((out / "results.json").read_text()), time.time() - t0


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_contract_meta(study):
    out, rc, res, _ = study
    assert rc == 0
    meta = res["meta"]
    for key in ("config", "config_hash", "git_commit", "packages", "device", "seeds", "weights", "feature_source",
                "evaluation", "schema_version", "floors", "stage_keys"):
        assert key in meta, key
    assert meta["schema_version"] == 3 and meta["config"]["training_seeds"] == [0] and meta["ablation"] is None
    assert meta["metrics"]["gfid"] == {"higher_is_better": False, "description": "gFID-N; std over the sampling seeds"}
    assert meta["config"]["eval"]["gfid_n"] == 10
    floor = meta["floors"]["fid_real_vs_real"]
    assert floor["n"] == 10 and floor["value"] > 0  # real vs real at the gFID's N
    assert set(meta["stage_keys"]["gaussian"]) == {"0"} and "matching" in meta["evaluation"]
    assert meta["feature_source"] == {"gaussian": "analytic", "gmm": "analytic", "vae": "local"}
    assert meta["weights"]["inception"]["converted_sha256"]
    assert meta["evaluation"]["gfid"]["labels"].startswith("class-balanced")
    _no_nan(out / "results.json")


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
@pytest.mark.parametrize("name", ["gaussian", "gmm", "vae"])
def test_contract_prior_row(study, name):
    """One training seed: the row is that seed's entry, its spread the sampling seeds'."""
    _, _, res, _ = study
    r = res["priors"][name]
    assert r["status"] == "ok"
    for key in ("rfid", "psnr", "ssim", "gfid_n"):
        assert isinstance(r[key], (int, float)), key
    assert r["gfid_n"] == r["gfid"]["n"] == 10 and r["gfid"]["seeds"] == [0, 1]
    assert set(r["gfid"]) >= {"mean", "std", "seeds", "n", "spread", "training_std", "sampling_std",
                              "training_seeds"} and r["gfid"]["std"] >= 0
    assert set(r["per_training_seed"]) == {"0"}
    seed0 = r["per_training_seed"]["0"]
    assert seed0["training_seed"] == 0 and (seed0["rfid"], seed0["psnr"]) == (r["rfid"], r["psnr"])
    assert r["gfid"]["mean"] == seed0["gfid"]["mean"] and r["gfid"]["std"] == seed0["gfid"]["std"]
    assert r["gfid"]["spread"] == "sampling seeds (one training seed)" and r["gfid"]["training_std"] is None
    assert r["spread"]["rfid"] is None and r["gfid"]["training_seeds"] == [0]
    assert {"mean", "scale"} <= set(r["generator_norm"]) and {"mean", "std"} <= set(r["kid"])
    for side in ("reference", "dmvae"):
        assert {"knn_accuracy", "linear_probe_accuracy", "silhouette"} <= set(r["structure"][side])
    assert r["loss_terms"]["l1"] and "dm_score" not in r and "matching" in r
    assert r["models"]["generator"]["params"] > 0 and r["models"]["generator"]["epochs"] > 0
    assert set(r["throughput_img_per_s"]) == ({"dmvae", "generator"} if name == "vae" else
                                              {"teacher", "start", "dmvae", "generator"})


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
@pytest.mark.parametrize("name", ["gaussian", "gmm", "vae"])
def test_contract_convergence(study, name):
    _, _, res, _ = study
    r = res["priors"][name]
    seed0 = r["per_training_seed"]["0"]
    assert r["converged"]["per_training_seed"] == {"0": seed0["converged"]["converged"]}
    assert r["converged"]["all"] is bool(seed0["converged"]["converged"]) and "within 5%" in r["converged"]["rule"]
    assert [c["fraction"] for c in r["convergence"]] == [0.5, 1.0]
    assert all({"epoch", "gfid"} <= set(c) for c in r["convergence"])
    # the last convergence point is the first seed's final gFID (same samples, same N here)
    assert r["convergence"][-1]["gfid"] == pytest.approx(r["gfid_per_seed"][0]["gfid"])


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
@pytest.mark.parametrize("name", ["gaussian", "gmm"])
def test_contract_matching_and_dm_stage(study, name):
    _, _, res, _ = study
    r = res["priors"][name]
    m, m0 = r["matching"], r["per_training_seed"]["0"]["matching"]
    for when in ("before", "after", "floor", "teacher_samples"):
        assert {"mmd2", "sliced_w2", "c2st_acc"} <= set(m[when]) and m0[when]["n"] == 64, when
        assert m[when]["mmd2"] == pytest.approx(m0[when]["mmd2"]), when  # the mean of one seed
    assert m["reached_all"] is m0["reached"] and m["per_training_seed"] == {"0": m0["reached"]}
    assert m["rule"].startswith("reached if MMD^2 after <= 3 x floor")
    # the DM stage's probe curve (smoke: probe_every 20 over 40 iterations) and its tokenizer turns
    assert [p["step"] for p in r["dm_curve"]] == [0, 20, 40]
    assert r["tokenizer_updates"] == 8 and r["regulariser"]["dm_every"] == 5  # 40 / 5
    assert set(r["timings"]) == STAGES and r["encoder_start"]["kind"] == "plain-ae"  # auto, no image encoder


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
@pytest.mark.parametrize("name", ["gaussian", "gmm", "vae"])
def test_contract_figure_data(study, name):
    out, _, res, _ = study
    r = res["priors"][name]
    fig = json.loads((out / r["figure_data"]["tsne"]).read_text())
    assert len(fig["dmvae_xy"]) == len(fig["dmvae_labels"]) > 0 and len(fig["reference_xy"][0]) == 2
    recon = plt.imread(out / r["figure_data"]["recon_grid"])  # ref_n = 10: originals over reconstructions
    samples = plt.imread(out / r["figure_data"]["sample_grid"])  # up to 4 per class (gfid_n), class = column
    assert recon.shape[:2] == (2 * 33 - 1, 10 * 33 - 1) and samples.shape[:2] == (32, 10 * 33 - 1)  # gfid_n = 10: one row
    assert recon.std() > 0.05 and samples.std() > 0.01  # real images, not a blank canvas


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_contract_stage_times_and_report(study):
    """Stage times are each stage's own (lazy stages compute upstream ones inside): they add up to no more
    than the run's wall time (inclusive times would count the training stages twice)."""
    out, _, res, _ = study
    meta = res["meta"]
    shared_start = res["priors"]["gaussian"]["timings"]["start"]
    own = sum(sum(r["timings"].values()) for r in res["priors"].values()) - shared_start  # start: once
    assert own <= meta["wall_s"] + 1e-6 and meta["timings"].startswith("own seconds")
    # the run ends with its report, rendered from results.json (tests/test_reports.py tests the renderer)
    md = (out / "report.md").read_text()
    assert "## Reference priors (Table 1 style)" in md and "| vae | VAE-baseline | ok |" in md
    assert (out / "report.html").stat().st_size > 10_000 and (out / "figures" / "tsne.png").exists()
    # one shared encoder start for both DM rows
    assert len(list((out / "stages" / "_shared").iterdir())) == 1
    assert "## Did q(z) reach p_r?" in md and "| vae | — | — (no DM stage)" in md


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_contract_the_vae_row_is_the_kl_baseline(study):
    """No teacher, no start, no matching: never a made-up number."""
    _, _, res, _ = study
    vae = res["priors"]["vae"]
    assert vae["status"] == "ok" and set(vae["timings"]) == STAGES - {"teacher", "start"}
    assert vae["matching"] is None and vae["dm_curve"] is None and vae["regulariser"]["kind"].startswith("KL")
    assert vae["tokenizer_updates"] == 20 + 8  # its budget: the encoder start's steps + the DM stage's turns


def _no_nan(path):
    """results.json is strict JSON: no NaN / Infinity tokens."""
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


def _strip(res):
    return {n: {k: v for k, v in r.items() if k not in ("cached", "wall_s")} for n, r in res["priors"].items()}


def _cached_rerun(out, cache, monkeypatch) -> list[int]:
    """Re-run the study on its own folder with every training function forbidden; returns the sizes of the
    image sets Inception was run on (it should be none: tested by the next test but one)."""
    for fn in ("train_teacher", "pretrain_autoencoder", "train_dmvae", "train_vae_baseline", "train_generator"):
        monkeypatch.setattr(pipeline, fn, lambda *a, _fn=fn, **k: pytest.fail(f"{_fn} ran on a cached re-run"))
    from bench.metrics import fid
    real, calls = fid.inception_features, []
    monkeypatch.setattr(fid, "inception_features", lambda images, *a, **k: calls.append(len(images)) or
                        real(images, *a, **k))
    assert main([*FAST, "--priors", "gaussian,gmm,vae", "--out", str(out), "--cache-dir", cache]) == 0
    return calls


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_rerun_skips_every_stage_and_gives_identical_numbers(study, cache, monkeypatch):
    out, _, first, _ = study
    t0 = time.time()
    _cached_rerun(out, cache, monkeypatch)
    assert time.time() - t0 < 60
    again = json.loads((out / "results.json").read_text())
    assert _strip(again) == _strip(first)
    assert again["meta"]["floors"] == first["meta"]["floors"]
    assert set(again["priors"]["gaussian"]["cached"]) >= {"evaluate"}


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_cached_rerun_runs_no_inception(study, cache, monkeypatch):
    out, _, _, _ = study
    assert _cached_rerun(out, cache, monkeypatch) == []


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_nan_in_one_prior_marks_it_failed_and_the_other_goes_on(study, cache, tmp_path, monkeypatch):
    out, _, _, _ = study
    for d in ("_shared", "gaussian"):  # the gaussian row is finished already: only gmm trains here
        shutil.copytree(out / "stages" / d, tmp_path / "stages" / d)
    real = pipeline.train_dmvae

    def exploding(images, labels, prior, *args, **kw):
        if prior.info.name == "gmm":  # a learning rate that blows the weights up: a real NaN in training
            args = (args[0], args[1], dataclasses.replace(args[2], lr=1e30), *args[3:])
        return real(images, labels, prior, *args, **kw)

    monkeypatch.setattr(pipeline, "train_dmvae", exploding)
    assert main([*FAST, "--priors", "gmm,gaussian", "--out", str(tmp_path), "--cache-dir", cache]) == 1
    res = json.loads((tmp_path / "results.json").read_text())
    gmm, gauss = res["priors"]["gmm"], res["priors"]["gaussian"]
    assert gmm["status"] == "failed" and "non-finite" in gmm["reason"] and "step" in gmm["reason"]
    assert "rfid" not in gmm and "gfid" not in gmm
    assert gauss["status"] == "ok" and gauss["gfid"]["n"] == 10
    _no_nan(tmp_path / "results.json")


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_force_recomputes_a_stage_and_those_after_it(study, cache, tmp_path, monkeypatch):
    out, _, first, _ = study
    shutil.copytree(out / "stages", tmp_path / "stages")
    ran = []
    real = pipeline.train_generator
    monkeypatch.setattr(pipeline, "train_generator", lambda *a, **k: ran.append(1) or real(*a, **k))
    monkeypatch.setattr(pipeline, "train_dmvae", lambda *a, **k: pytest.fail("dmvae is before the forced stage"))
    assert main([*FAST, "--priors", "gaussian", "--out", str(tmp_path), "--cache-dir", cache,
                 "--force", "generator"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert ran == [1] and "evaluate" not in res["priors"]["gaussian"]["cached"]
    assert res["priors"]["gaussian"]["gfid"] == first["priors"]["gaussian"]["gfid"]  # deterministic on CPU


@pytest.mark.slow  # the module's smoke study, then ~200 images through Inception (about 3 min on 2 busy cores)
def test_guidance_sweep_added_to_a_finished_run_computes_only_the_sweep(study, cache, tmp_path, monkeypatch):
    """`--set eval.cfg_scales=...` on a finished run: nothing upstream is trained or evaluated again; the sweep
    at Table 1's scale (1) reproduces Table 1's per-seed gFID and precision/recall exactly (the same samples);
    the report gets the sweep table, its figure (and the figure's data) and per-class FID beside its floor.
    N = 20 over the 10 classes: 2 samples, reference and floor images per class, the least a class's FID needs."""
    out = tmp_path / "run"
    shutil.copytree(study[0] / "stages", out / "stages")  # the fixture's trained stages
    for fn in ("train_teacher", "pretrain_autoencoder", "train_dmvae", "train_vae_baseline", "train_generator"):
        monkeypatch.setattr(pipeline, fn, lambda *a, _fn=fn, **k: pytest.fail(f"{_fn} ran"))
    args = [*FAST, "--set", "eval.gfid_n=20", "--set", "eval.ref_n=20", "--priors", "gaussian", "--out", str(out),
            "--cache-dir", cache]
    assert main(args) == 0  # the finished run: Table 1 at N = 20
    finished = json.loads((out / "results.json").read_text())
    before, before_keys = finished["priors"]["gaussian"], finished["meta"]["stage_keys"]["gaussian"]["0"]
    from bench.study import evaluate
    monkeypatch.setattr(evaluate, "generation", lambda *a, **k: pytest.fail("the evaluation ran again"))
    assert main([*args, "--set", "eval.cfg_scales=2,1"]) == 0
    res = json.loads((out / "results.json").read_text())
    g = res["priors"]["gaussian"]
    assert set(g["cached"]) >= {"dmvae", "generator", "evaluate"} and "guidance" not in g["cached"]
    assert set(g["timings"]) == STAGES | {"guidance"}
    keys = res["meta"]["stage_keys"]["gaussian"]["0"]
    assert keys == {**before_keys, "guidance": keys["guidance"]}  # every other stage key as before the sweep
    for key in ("rfid", "psnr", "ssim", "gfid", "kid", "precision_recall", "convergence"):
        assert g[key] == before[key], key  # Table 1 is the finished run's
    seed0 = g["per_training_seed"]["0"]
    sweep = seed0["guidance"]
    assert sweep["scales"] == [1.0, 2.0] and sweep["n"] == 20 and sweep["seeds"] == [0, 1]
    at1, at2 = sweep["per_scale"]
    assert at1["scale"] == 1.0 and at2["scale"] == 2.0
    for mine, table1 in zip(at1["per_seed"], seed0["gfid_per_seed"]):  # the very samples Table 1 scored
        assert (mine["seed"], mine["gfid"], mine["precision"], mine["recall"]) == \
            (table1["seed"], table1["gfid"], table1["precision"], table1["recall"])
    assert at1["gfid"]["mean"] == g["gfid"]["mean"] and at2["gfid"]["mean"] != at1["gfid"]["mean"]
    pc = sweep["per_class"]
    assert pc["n"] == pc["n_ref"] == pc["n_floor"] == [2] * 10 and pc["names"][0] == "h-stripes"
    assert all(f > 0 for f in pc["floor"]) and all(f > 0 for w in (at1, at2) for f in w["per_class_fid"])
    assert g["guidance"]["per_scale"][0]["gfid"]["sampling_std"] == at1["gfid"]["std"]  # the row: one seed
    assert res["meta"]["evaluation"]["guidance"]["scales"] == [1.0, 2.0]
    md = (out / "report.md").read_text()
    assert "## Guidance sweep (CFG)" in md and "| gaussian | 1 | " in md and "| gaussian | 2 | " in md
    assert "](figures/guidance_sweep.png)" in md and (out / "figures" / "guidance_sweep.png").is_file()
    fig = json.loads((out / "figures" / "guidance_sweep.json").read_text())["priors"]["gaussian"]
    assert [(p["scale"], p["gfid"]) for p in fig] == [(1.0, at1["gfid"]["mean"]), (2.0, at2["gfid"]["mean"])]
    per_class = _md_tables_before(md, "## Did q(z) reach p_r?")[-1]
    assert per_class[0].startswith("| prior | rank (1 = best) | class |") and len(per_class) == 2 + 6
    assert "| gaussian | 1 of 10 |" in per_class[2] and "| 2 / 2 / 2 |" in per_class[2]
    csv = pd.read_csv(out / "results.csv")
    assert sorted(csv[csv.metric == "gfid_cfg"].cfg_scale) == [1.0, 2.0]
    assert main([*args, "--set", "eval.cfg_scales=1,2"]) == 0  # again: every stage loads, the sweep too
    assert "guidance" in json.loads((out / "results.json").read_text())["priors"]["gaussian"]["cached"]


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_experiment_logs_come_from_the_stages_trained_in_this_run(study, cache, tmp_path):
    """With log.tensorboard on, the finished stages are still found (logging is never hashed) and write
    nothing; the one stage trained now writes its event files, and no number changes."""
    out, _, first, _ = study
    shutil.copytree(out / "stages", tmp_path / "stages")
    assert main([*FAST, "--priors", "gaussian", "--out", str(tmp_path), "--cache-dir", cache, "--force", "generator",
                 "--set", "log.tensorboard=true", "--set", "log.every=5"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    board = tmp_path / "tensorboard"
    assert sorted(p.parent.relative_to(board).as_posix() for p in board.rglob("events.out.tfevents.*")) == [
        "gaussian/seed0/generator"]
    assert {"teacher", "start", "dmvae"} <= set(res["priors"]["gaussian"]["cached"])
    assert res["priors"]["gaussian"]["gfid"] == first["priors"]["gaussian"]["gfid"]
    assert res["meta"]["config"]["log"]["tensorboard"] is True and "log" in res["meta"]["config_neutral"]


@pytest.mark.parametrize("preset", list(STUDY_PRESETS))
def test_dry_run_prints_each_preset(preset, capsys):
    assert main(["--preset", preset, "--priors", "gaussian,dino", "--dry-run", "--set", "generator.steps=7"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["generator"]["steps"] == 7 and len(cfg["eval"]["seeds"]) >= 2
    if preset in ("gpu", "paper"):
        assert cfg["eval"]["gfid_n"] == 5000
    if preset == "paper":
        assert (cfg["resolution"], cfg["latent_channels"], cfg["latent_size"]) == (256, 32, 16)
        assert cfg["generator"]["net"] == "XL" and cfg["dmvae"]["lr"] == 2e-5


def test_paper_preset_networks_have_the_papers_sizes():
    """Built on the meta device (nothing allocated): the downstream DiT-XL is ~675M parameters."""
    from bench.core.dit import build_dit
    from bench.dmvae import build_tokenizer

    p = STUDY_PRESETS["paper"]
    latent = (p["latent_channels"], p["latent_size"], p["latent_size"])
    count = lambda m: sum(x.numel() for x in m.parameters())  # noqa: E731
    with torch.device("meta"):
        gen = build_dit(p["generator"].net, latent, 1000, p["generator"].patch)
        teacher = build_dit(p["teacher"].net, latent, 1000, p["teacher"].patch)
        enc, dec = build_tokenizer((3, p["resolution"], p["resolution"]), latent, p["dmvae"].tokenizer)
    assert next(gen.parameters()).device.type == "meta"
    assert count(gen) == pytest.approx(675e6, rel=0.01)
    assert count(teacher) == pytest.approx(458e6, rel=0.02)  # DiT-L
    assert count(enc) > 1e6 and count(dec) > 1e6


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "tiny", "--priors", "gaussian"], "Unknown preset 'tiny'"),
    (["--preset", "smoke", "--priorz", "gaussian"], "unrecognized arguments: --priorz"),
    (["--priors", "gaussian,gmn", "--dry-run"], "Did you mean 'gmm'"),
    (["--priors", "gaussian", "--force", "teachr"], "Did you mean 'teacher'"),
    (["--priors", "gaussian", "--set", "eval.gfid_n=many", "--dry-run"], "expects int"),
    (["--priors", "gaussian", "--set", "dmvae.lrr=1", "--dry-run"], "Did you mean 'dmvae.lr'"),
    (["--priors", "gaussian", "--ablate", "dmvae.lr", "--dry-run"], "KEY=V1,V2"),
    # non-finite settings could never be written to results.json
    (["--set", "dmvae.lr=nan", "--dry-run"], "Setting 'dmvae.lr' must be a finite number"),
    (["--set", "eval.converged_within=inf", "--dry-run"], "Setting 'eval.converged_within' must be a finite"),
    # ranges are checked when the config is resolved, naming the setting
    (["--set", "generator.steps=0", "--dry-run"], "Setting 'generator.steps' must be greater than 0, got 0"),
    (["--set", "generator.steps=-5", "--dry-run"], "Setting 'generator.steps' must be greater than 0, got -5"),
    (["--set", "dmvae.batch=0", "--dry-run"], "Setting 'dmvae.batch' must be greater than 0"),
    (["--set", "eval.batch=0", "--dry-run"], "Setting 'eval.batch' must be greater than 0"),
    (["--set", "dmvae.lr=-1e-4", "--dry-run"], "Setting 'dmvae.lr' must be greater than 0"),
    (["--set", "dmvae.tokenizer.disc_lr=-1", "--dry-run"], "Setting 'dmvae.tokenizer.disc_lr' must be greater"),
    (["--set", "dmvae.t0=0.9", "--set", "dmvae.t1=0.5", "--dry-run"], "Setting 'dmvae.t1' must be greater than t0"),
    (["--set", "latent_channels=0", "--dry-run"], "Setting 'latent_channels' must be greater than 0"),
    (["--set", "latent_size=3", "--dry-run"], "Setting 'latent_size' must divide resolution = 32"),
    (["--set", "eval.ref_split=validation", "--dry-run"], "Setting 'eval.ref_split' must be one of test, val"),
    (["--set", "teacher.net=Q", "--dry-run"], "Setting 'teacher.net' must be one of P, T, S, B, L, XL"),
    (["--set", "generator.checkpoints=0.5,1.5", "--dry-run"], "Setting 'generator.checkpoints' must be fractions"),
    (["--set", "prior.noise_t=2", "--dry-run"], "Setting 'prior.noise_t' must lie in [0, 1]"),
    # the guidance sweep's scales: finite, >= 0, each once
    (["--set", "eval.cfg_scales=1,-0.5", "--dry-run"], "Setting 'eval.cfg_scales' must be finite guidance scales "
                                                       "of 0 or more"),
    (["--set", "eval.cfg_scales=1,nan", "--dry-run"], "Setting 'eval.cfg_scales' must be a finite number"),
    (["--set", "eval.cfg_scales=2,inf", "--dry-run"], "Setting 'eval.cfg_scales' must be a finite number"),
    (["--set", "eval.cfg_scales=1.5,1.5", "--dry-run"], "Setting 'eval.cfg_scales' must not name a scale twice"),
    (["--set", "eval.cfg_scales=1,strong", "--dry-run"], "Setting 'eval.cfg_scales' expects float"),
    (["--set", "feature_size=huge", "--dry-run"], "Setting 'feature_size' must be one of smoke, cpu, gpu"),
    # a whole section given a plain value
    (["--set", "dmvae=3", "--dry-run"], "'dmvae' is a section of settings, not a value"),
    (["--set", "eval=foo", "--dry-run"], "'eval' is a section of settings, not a value"),
    # a section's setting given without its section: the hint names the full dotted setting
    (["--set", "dm_weight=2", "--dry-run"], "give it as dmvae.dm_weight, e.g. --set dmvae.dm_weight=..."),
    (["--set", "dmvae.dm_weight=x", "--dry-run"], "e.g. --set dmvae.dm_weight=..."),
    (["--set", "priors=", "--dry-run"], "Setting 'priors' must name at least one prior"),
    (["--ablate", "priors=gaussian,dino", "--dry-run"], "--ablate priors=... is not an ablation"),
])
def test_bad_input_is_one_clear_paragraph(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_wording_names_the_setting_not_the_class(capsys):
    assert main(["--set", "dmvae.dm_weigth=3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Unknown setting 'dmvae.dm_weigth'" in err and "Valid settings: dmvae.batch," in err
    assert "DMVAEConfig" not in err and "Configs" not in err


def test_every_setting_is_in_the_dry_run_and_settable(capsys):
    """The prior list and the prior-specific settings are part of the one resolved config."""
    assert main(["--dry-run", "--priors", "text,noise", "--set", "prior.noise_t=0.3",
                 "--set", "prior.captions_file=caps.txt", "--set", "prior.subdino_classes=1,2",
                 "--set", "prior.gmm_components=4", "--set", "feature_size=smoke"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["priors"] == ["text", "noise"] and cfg["feature_size"] == "smoke"
    assert cfg["prior"] == {"captions_file": "caps.txt", "subdino_classes": [1, 2], "noise_t": 0.3,
                            "gmm_components": 4, "dino_net": None, "resnet_net": None, "text_net": None}
    assert main(["--dry-run", "--set", "priors=gaussian,dino"]) == 0
    assert json.loads(capsys.readouterr().out)["priors"] == ["gaussian", "dino"]


def test_prior_settings_reach_the_prior():
    """PriorSettings is derived from the study config's `prior` section, not a second config."""
    cfg = resolve(StudyConfig, STUDY_PRESETS, "smoke", None, ["prior.noise_t=0.25", "prior.gmm_components=3",
                                                               "feature_size=gpu"])
    data = SimpleNamespace(train=SimpleNamespace(images=torch.zeros(2, 1, 32, 32)))
    run = pipeline.PriorRun("noise", SimpleNamespace(cfg=cfg, data=data, data_fp="x"))
    assert (run.settings.noise_t, run.settings.gmm_components, run.settings.feature_size) == (0.25, 3, "gpu")


def test_a_prior_named_twice_runs_once(capsys):
    assert main(["--dry-run", "--priors", "gaussian,dino,gaussian"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["priors"] == ["gaussian", "dino"]
    assert "note: gaussian named more than once in the priors; each runs once." in out.err


def test_batches_that_do_not_split_over_the_processes_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bench.distributed.world_size", lambda: 3)  # as under torchrun --nproc_per_node=3
    assert main(["--preset", "smoke", "--priors", "gaussian", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "With 3 processes every training batch must split evenly" in err and "teacher.batch=16" in err
    assert not (tmp_path / "results.json").exists()


def test_second_run_on_a_locked_folder_refuses(tmp_path, capsys):
    with RunLock(tmp_path):
        assert main(["--preset", "smoke", "--priors", "gaussian", "--out", str(tmp_path)]) == 2
    assert "Another run" in capsys.readouterr().err


def test_feature_form_of_the_frechet_distance_matches_the_covariance_form():
    from bench.metrics import fid
    from bench.metrics.fid import frechet_distance_features

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 20, generator=g, dtype=torch.float64)
    b = 1.5 * torch.randn(200, 20, generator=g, dtype=torch.float64) + 0.3
    (m1, s1), (m2, s2) = fid.stats(a), fid.stats(b)
    assert frechet_distance_features(a, b) == pytest.approx(fid.frechet_distance(m1, s1, m2, s2), rel=1e-9)
    assert frechet_distance_features(a, a) == pytest.approx(0, abs=1e-9)


def _torchrun(args: list[str], cache: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "run_all.py", *FAST, *args, "--cache-dir", cache]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_torchrun_two_processes_give_the_same_metrics(study, cache, tmp_path):
    """`torchrun --nproc_per_node=2` (gloo) trains and evaluates to the single process's numbers.

    Re-evaluating the single-process stages is exact (sampling is seeded per index, rank 0
    evaluates). Re-training draws the same batches and noise (bench/core/noise.py) and differs only
    in float summation order, which Adam turns into +-lr steps on weights whose gradient is ~0
    (tests/test_dmvae.py). Measured at this scale (20 steps, N = 10): gaussian rFID 425.46 vs
    426.46, gFID 497.07 vs 497.11; vae rFID equal to 4 decimals, gFID 473.44 vs 473.43.
    """
    out, _, first, _ = study
    for d in ("_shared", "gaussian"):  # evaluation reads the encoder start too (matching "before")
        shutil.copytree(out / "stages" / d, tmp_path / "eval" / "stages" / d)
    _torchrun(["--priors", "gaussian", "--out", str(tmp_path / "eval"), "--force", "evaluate"], cache)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["meta"]["world_size"] == 2 and "evaluate" not in res["priors"]["gaussian"]["cached"]
    a, b = first["priors"]["gaussian"], res["priors"]["gaussian"]
    for key in ("rfid", "psnr", "ssim", "gfid", "kid", "convergence", "structure"):
        assert a[key] == b[key], key

    _torchrun(["--priors", "gaussian,vae", "--out", str(tmp_path / "train")], cache)  # every stage trained anew
    res = json.loads((tmp_path / "train" / "results.json").read_text())
    for name in ("gaussian", "vae"):
        a, b = first["priors"][name], res["priors"][name]
        assert not b["cached"], b["cached"]  # nothing loaded: every stage trained under 2 ranks
        for key in ("rfid", "psnr", "ssim"):
            assert b[key] == pytest.approx(a[key], rel=0.01), (name, key)
        assert b["gfid"]["mean"] == pytest.approx(a["gfid"]["mean"], rel=1e-3), name


# ------------------------------------------------------------------------------ training seeds
STAGE_CONFIGS = ("teacher", "pretrain", "dmvae", "generator")


def test_for_training_seed_shifts_every_training_stage_seed_only():
    base = StudyConfig(**STUDY_PRESETS["smoke"], seed=4, training_seeds=(0, 1, 2))
    base = dataclasses.replace(base, teacher=dataclasses.replace(base.teacher, seed=7))  # stage seeds may differ
    for s in (0, 1, 2):
        cfg = base.for_training_seed(s)
        assert cfg.training_seeds == (s,)
        for stage in STAGE_CONFIGS:
            a, b = getattr(base, stage), getattr(cfg, stage)
            assert b.seed == a.seed + s, stage
            assert dataclasses.replace(b, seed=a.seed) == a, stage  # nothing else of the stage changes
        # the data split, feature nets and evaluation subsets are shared by the training seeds
        assert cfg.seed == 4 and (cfg.dataset, cfg.limit, cfg.eval, cfg.start) == (base.dataset, base.limit,
                                                                                     base.eval, base.start)
        assert dataclasses.replace(cfg, training_seeds=base.training_seeds,
                                   **{k: getattr(base, k) for k in STAGE_CONFIGS}) == base
    assert base.for_training_seed(1).teacher.seed == 8 and base.for_training_seed(2).dmvae.seed == 2
    assert StudyConfig().for_training_seed(0) == StudyConfig()  # the default run is training seed 0


@pytest.mark.parametrize("seeds", [(0, 0), (1, 2, 1), (), (-1,)])
def test_training_seeds_must_be_distinct_non_negative(seeds):
    with pytest.raises(ValueError, match="training_seeds must be distinct non-negative integers"):
        StudyConfig(training_seeds=seeds)


def test_start_is_validated_and_training_seeds_parse_from_the_command_line(capsys):
    assert StudyConfig().start == "auto" and StudyConfig().training_seeds == (0,)
    with pytest.raises(ValueError, match="start must be one of auto, plain-ae, reference-ae"):
        StudyConfig(start="distill")
    assert main(["--preset", "smoke", "--priors", "gaussian", "--dry-run", "--set", "training_seeds=0,1,2",
                 "--set", "start=plain-ae"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["training_seeds"] == [0, 1, 2] and cfg["start"] == "plain-ae"
    assert main(["--preset", "smoke", "--priors", "gaussian", "--dry-run", "--set", "training_seeds=0,0"]) == 2
    assert "training_seeds must be distinct" in capsys.readouterr().err


def _ctx(**overrides):
    """What PriorRun reads at construction (its stages stay lazy: nothing is trained or loaded)."""
    from bench.data import DataSpec, load_dataset

    cfg = StudyConfig(**{**STUDY_PRESETS["smoke"], "dataset": "synthetic", **overrides})
    data = load_dataset(DataSpec("synthetic", cfg.resolution, limit=20))
    return SimpleNamespace(cfg=cfg, data=data, data_fp="fp")


def test_stage_keys_per_training_seed_and_encoder_start():
    ctx = _ctx(training_seeds=(0, 1))
    a, b = pipeline.PriorRun("gaussian", ctx, 0), pipeline.PriorRun("gaussian", ctx, 1)
    assert a.cfg.dmvae.seed == 0 and b.cfg.dmvae.seed == 1 and b.tseed == 1
    assert a.keys["prior"] == b.keys["prior"]  # the prior is shared by the training seeds
    assert all(a.keys[s] != b.keys[s] for s in ("teacher", "start", "dmvae", "generator", "evaluate"))
    assert pipeline.PriorRun("gaussian", ctx, 0).keys == a.keys  # deterministic
    # auto: gaussian has no image encoder -> the plain AE, shared by all such rows; dino -> its own reference AE
    assert (a.start_kind, a.start_owner) == ("plain-ae", "_shared")
    assert a.keys["start"] == pipeline.PriorRun("gmm", ctx, 0).keys["start"]
    dino = pipeline.PriorRun("dino", ctx, 0)
    assert (dino.start_kind, dino.start_owner) == ("reference-ae", "dino") and dino.keys["start"] != a.keys["start"]
    plain = pipeline.PriorRun("dino", _ctx(start="plain-ae"), 0)
    assert (plain.start_kind, plain.start_owner) == ("plain-ae", "_shared")
    with pytest.raises(ValueError, match="'text' has no image encoder"):
        pipeline.PriorRun("text", _ctx(start="reference-ae"), 0)
    vae = pipeline.PriorRun("vae", ctx, 1)  # the KL baseline: no teacher, no start
    assert vae.baseline and set(vae.keys) == {"prior", "dmvae", "generator", "evaluate"}


def test_guidance_sweep_is_a_stage_of_its_own_and_leaves_the_other_keys_alone():
    """eval.cfg_scales adds a "guidance" stage keyed on the generator and the settings the sweep reads; every
    other stage key stays as without a sweep, so adding a sweep to a finished run computes only the sweep."""
    plain = pipeline.PriorRun("gaussian", _ctx(), 0).keys
    swept = pipeline.PriorRun("gaussian", _ctx(eval=dataclasses.replace(STUDY_PRESETS["smoke"]["eval"],
                                                                         cfg_scales=(2.0, 1.0))), 0).keys
    assert "guidance" not in plain and swept == {**plain, "guidance": swept["guidance"]}

    def guidance_key(**ev):
        return pipeline.PriorRun("gaussian", _ctx(eval=dataclasses.replace(STUDY_PRESETS["smoke"]["eval"], **ev)),
                                 0).keys["guidance"]
    assert guidance_key(cfg_scales=(1, 2)) == swept["guidance"]  # one order: scales are kept sorted
    assert guidance_key(cfg_scales=(1, 2), structure_n=100) == swept["guidance"]  # not read by the sweep
    for change in (dict(cfg_scales=(1, 3)), dict(cfg_scales=(1, 2), gfid_n=40), dict(cfg_scales=(1, 2), seeds=(3, 4)),
                   dict(cfg_scales=(1, 2), sample_steps=3), dict(cfg_scales=(1, 2), ref_n=40),
                   dict(cfg_scales=(1, 2), batch=7),  # float rounding only, but scale 1.0 must equal Table 1
                   dict(cfg_scales=(1, 2), reference_batch="ref.npz")):
        assert guidance_key(**change) != swept["guidance"], change
    vae = pipeline.PriorRun("vae", _ctx(eval=dataclasses.replace(STUDY_PRESETS["smoke"]["eval"], cfg_scales=(1.0,))), 0)
    assert set(vae.keys) == {"prior", "dmvae", "generator", "evaluate", "guidance"}


def test_cfg_scales_is_left_out_of_the_config_hash_at_its_default():
    from bench.config import config_hash, neutral_keys

    cfg = resolve(StudyConfig, STUDY_PRESETS, "smoke")
    swept = resolve(StudyConfig, STUDY_PRESETS, "smoke", None, ["eval.cfg_scales=3,1,1.5"])
    assert "eval.cfg_scales" in neutral_keys(cfg) and "eval.cfg_scales" not in neutral_keys(swept)
    assert swept.eval.cfg_scales == (1.0, 1.5, 3.0) and config_hash(swept) != config_hash(cfg)


# ------------------------------------------------------------------------------ aggregate over training seeds
def _stats(mmd2):
    return {"mmd2": mmd2, "sliced_w2": 10 * mmd2, "c2st_acc": 0.5 + mmd2, "n": 64, "n_ref": 64}


def _seed_entry(tseed, rfid, psnr, ssim, gmean, gstd, kid, converged, after=None):
    """One training seed's entry as runner._prior_entry writes it (the fields aggregate reads, and a few others)."""
    return {"status": "ok", "training_seed": tseed, "rfid": rfid, "psnr": psnr, "ssim": ssim,
            "gfid": {"mean": gmean, "std": gstd, "seeds": [0, 1], "n": 50},
            "kid": {"mean": kid, "std": 0.001, "subset_size": 25, "subsets": 100},
            "converged": {"converged": converged, "rule": "converged if ...", "previous": 1.0, "last": 1.0},
            "matching": None if after is None else {
                "before": _stats(0.05), "after": _stats(after), "floor": _stats(0.004), "teacher_samples": _stats(0.006),
                "reached": after <= 0.012, "rule": "reached if ...", "started_at_prior": False, "threshold": 0.015},
            "structure": {"dmvae": {"knn_accuracy": 0.5 + tseed / 100}}, "convergence": [{"epoch": 1.0, "gfid": gmean}],
            "dm_curve": [{"step": 0, "mmd2": 0.05}], "encoder_start": {"kind": "plain-ae"}}


def test_aggregate_two_training_seeds():
    # keys "2" and "10": sorted as numbers, so seed 2 is the first seed (its structure, curve, ... are kept)
    per = {"10": _seed_entry(10, 14.0, 22.0, 0.7, 36.0, 3.0, 0.03, False, after=0.03),
           "2": _seed_entry(2, 10.0, 20.0, 0.5, 30.0, 1.0, 0.01, True, after=0.01)}
    row = aggregate(per)
    assert (row["rfid"], row["psnr"], row["ssim"]) == pytest.approx((12.0, 21.0, 0.6))
    assert row["spread"]["rfid"] == pytest.approx(math.sqrt(8))  # sample std, ddof 1: sqrt((2^2 + 2^2) / 1)
    assert row["spread"]["psnr"] == pytest.approx(math.sqrt(2)) and row["spread"]["ssim"] == pytest.approx(math.sqrt(0.02))
    assert row["spread"]["gfid"] == pytest.approx(math.sqrt(18)) and row["spread"]["training_seeds"] == [2, 10]
    g = row["gfid"]
    assert g["mean"] == pytest.approx(33.0) and g["std"] == pytest.approx(math.sqrt(18)) == g["training_std"]
    assert g["spread"] == "training seeds" and g["sampling_std"] == pytest.approx(2.0)  # mean of 1 and 3
    assert (g["n"], g["seeds"], g["training_seeds"]) == (50, [0, 1], [2, 10])
    assert row["kid"]["mean"] == pytest.approx(0.02) and row["kid"]["subset_size"] == 25
    assert row["converged"]["all"] is False and row["converged"]["per_training_seed"] == {"2": True, "10": False}
    m = row["matching"]
    assert m["reached_all"] is False and m["per_training_seed"] == {"2": True, "10": False}
    assert m["after"]["mmd2"] == pytest.approx(0.02) and m["after"]["sliced_w2"] == pytest.approx(0.2)
    assert m["after"]["c2st_acc"] == pytest.approx(0.52) and m["floor"]["mmd2"] == pytest.approx(0.004)
    assert m["rule"] == "reached if ..." and row["converged"]["rule"] == "converged if ..."
    assert row["structure"] == per["2"]["structure"] and row["training_seed"] == 2  # the first seed's
    both = {s: {**e, "converged": {**e["converged"], "converged": True},
                "matching": {**e["matching"], "reached": True}} for s, e in per.items()}
    assert aggregate(both)["converged"]["all"] is True and aggregate(both)["matching"]["reached_all"] is True


def test_aggregate_one_training_seed_keeps_the_sampling_spread():
    e = _seed_entry(0, 10.0, 20.0, 0.5, 30.0, 1.5, 0.01, None)  # vae row: no matching; convergence not judged
    row = aggregate({"0": e})
    assert (row["rfid"], row["psnr"], row["ssim"]) == (10.0, 20.0, 0.5)
    g = row["gfid"]
    assert g["mean"] == 30.0 and g["std"] == 1.5 == g["sampling_std"] and g["training_std"] is None
    assert g["spread"] == "sampling seeds (one training seed)"
    assert all(row["spread"][k] is None for k in ("rfid", "psnr", "ssim", "gfid"))
    assert row["matching"] is None and row["converged"] == {"all": False, "rule": "converged if ...",
                                                          "per_training_seed": {"0": None}}


def _sweep(gfids: dict[float, float], per_class: list | None = None) -> dict:
    """One training seed's guidance record (bench/study/guidance.py) with made-up numbers."""
    return {"scales": sorted(gfids), "table1_scale": 1.0, "n": 50, "seeds": [0, 1], "k": 3,
            "per_scale": [{"scale": w, "gfid": {"mean": g, "std": 1.0}, "precision": {"mean": 0.5, "std": 0.1},
                           "recall": {"mean": 0.4, "std": 0.2}, "per_seed": [],
                           "per_class_fid": per_class or [g, g + 1.0]} for w, g in sorted(gfids.items())],
            "per_class": {"seed": 0, "names": ["a", "b"], "n": [25, 25], "n_ref": [25, 25], "n_floor": [25, 25],
                          "floor": [5.0, 6.0]}}


def test_aggregate_pools_the_guidance_sweep_per_scale_over_the_seeds_that_swept_it():
    from bench.study.aggregate import aggregate_guidance

    per = {"0": _seed_entry(0, 10.0, 20.0, 0.5, 30.0, 1.0, 0.01, True), "1": _seed_entry(1, 10.0, 20.0, 0.5, 34.0, 1.0,
                                                                                          0.01, True)}
    per["0"]["guidance"] = _sweep({1.0: 30.0, 2.0: 20.0}, per_class=[40.0, None])
    per["1"]["guidance"] = _sweep({1.0: 34.0, 3.0: 18.0}, per_class=[44.0, 50.0])  # merged: another set of scales
    row = aggregate(per)
    g = row["guidance"]
    assert g["scales"] == [1.0, 2.0, 3.0] and g["training_seeds"] == [0, 1] and g["per_class"] == per["0"]["guidance"][
        "per_class"]
    at1, at2, at3 = g["per_scale"]
    assert at1["training_seeds"] == [0, 1] and at1["gfid"]["mean"] == pytest.approx(32.0)
    assert at1["gfid"]["std"] == pytest.approx(math.sqrt(8)) == at1["gfid"]["training_std"]
    assert at1["gfid"]["spread"] == "training seeds" and at1["gfid"]["sampling_std"] == 1.0
    assert at1["per_class_fid"] == [42.0, None]  # a class one seed could not measure has no mean
    assert at2["training_seeds"] == [0] and at2["gfid"] == {"mean": 20.0, "std": 1.0, "training_std": None,
                                                           "sampling_std": 1.0,
                                                           "spread": "sampling seeds (one training seed)"}
    assert at3["training_seeds"] == [1] and at3["precision"]["mean"] == 0.5 and at3["recall"]["std"] == 0.2
    assert row["gfid"]["mean"] == pytest.approx(32.0)  # Table 1 itself is untouched by the sweep
    assert aggregate_guidance({}) is None and "guidance" not in aggregate({"0": _seed_entry(0, 1, 2, 0.5, 3, 1, 0.1,
                                                                                            True)})


# ------------------------------------------------------------------ results as data, merged runs
def _md_tables_before(md: str, heading: str = "## Provenance") -> list[list[str]]:
    """The Markdown tables of a report up to a heading (the run line, wall times and provenance differ
    between a merged and a single run by construction; the tables are what must agree)."""
    from test_reports import _tables  # tests/ is on sys.path (pytest rootdir-less import mode)

    return _tables(md.split(heading)[0])


def _single_runs(study, tmp_path, cache, groups):
    """Study runs of the fixture's priors in separate folders, from copies of its stages (no training)."""
    out = study[0]
    dirs = []
    for i, priors in enumerate(groups):
        d = tmp_path / f"run{i}"
        shutil.copytree(out / "stages", d / "stages")
        assert main([*FAST, "--priors", priors, "--out", str(d), "--cache-dir", cache]) == 0
        dirs.append(d)
    return dirs


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_results_csv_and_load_results_have_the_documented_columns(study):
    from reports import load_results
    from reports.data import COLUMNS, METRIC_INDEX

    out, _, res, _ = study
    frame = load_results(out)
    assert list(frame.columns) == COLUMNS
    assert set(frame["prior"]) == {"gaussian", "gmm", "vae"} and set(frame["training_seed"]) == {0}
    g = frame[(frame.prior == "gaussian") & (frame.metric == "gfid")].iloc[0]
    assert g.value == res["priors"]["gaussian"]["gfid"]["mean"] and g.n == 10 and g.sampling_seeds == "0 1"
    assert not g.higher_is_better and g.config_hash == res["meta"]["config_hash"]
    assert frame[frame.metric == "psnr"].higher_is_better.all()
    assert frame[(frame.prior == "vae") & frame.metric.str.startswith("mmd2")].empty  # no DM stage: no rows
    assert set(frame.metric) <= set(METRIC_INDEX)
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == COLUMNS and len(csv) == len(frame)


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_merged_report_of_single_prior_runs_equals_the_two_prior_run(study, cache, tmp_path):
    a, b = _single_runs(study, tmp_path, cache, ["gaussian", "gmm"])
    both = _single_runs(study, tmp_path / "both", cache, ["gaussian,gmm"])[0]
    merged = tmp_path / "merged"
    assert main(["report", str(merged), str(a), str(b)]) == 0
    got, want = ((d / "report.md").read_text() for d in (merged, both))
    assert _md_tables_before(got) == _md_tables_before(want) and len(_md_tables_before(want)) >= 5
    res = json.loads((merged / "results.json").read_text())
    assert [m["priors"] for m in res["meta"]["merged_from"]] == [["gaussian"], ["gmm"]]
    assert (merged / "results.csv").is_file() and (merged / "figure_data" / "tsne_gaussian.json").is_file()


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_merge_pools_training_seeds_and_labels_differing_configs(study, cache, tmp_path):
    from reports.merge import merge_runs

    a, = _single_runs(study, tmp_path, cache, ["gaussian"])
    seed1 = json.loads((a / "results.json").read_text())  # a second training seed, as another run wrote it
    e = seed1["priors"]["gaussian"]["per_training_seed"].pop("0")
    e = {**e, "training_seed": 1, "rfid": e["rfid"] + 2.0, "gfid": {**e["gfid"], "mean": e["gfid"]["mean"] + 4.0}}
    seed1["priors"]["gaussian"]["per_training_seed"] = {"1": e}
    seed1["meta"]["config"]["training_seeds"] = [1]
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "results.json").write_text(json.dumps(seed1))
    res, _ = merge_runs([a, tmp_path / "s1"])
    row = res["priors"]["gaussian"]
    assert sorted(row["per_training_seed"]) == ["0", "1"] and row["gfid"]["training_std"] > 2.0
    other = json.loads((a / "results.json").read_text())
    other["meta"]["config"]["dmvae"]["steps"] = 99  # a different DM budget: shown beside, never pooled
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(other))
    res, _ = merge_runs([a, tmp_path / "other"])
    assert sorted(res["priors"]) == ["gaussian [dmvae.steps=40]", "gaussian [dmvae.steps=99]"]
    newer = json.loads((a / "results.json").read_text())  # written after a setting was added, left at its default
    newer["meta"]["config"]["generator"]["later"] = False
    newer["meta"]["config_neutral"] = [*newer["meta"].get("config_neutral", []), "generator.later"]
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "results.json").write_text(json.dumps(newer))
    res, _ = merge_runs([tmp_path / "s1", tmp_path / "newer"])
    assert list(res["priors"]) == ["gaussian"]  # pooled with the run written before the setting existed
    newer["meta"]["config"]["generator"]["later"] = True
    newer["meta"]["config_neutral"].remove("generator.later")
    (tmp_path / "newer" / "results.json").write_text(json.dumps(newer))
    res, _ = merge_runs([tmp_path / "s1", tmp_path / "newer"])
    assert sorted(res["priors"]) == ["gaussian [generator.later=None]", "gaussian [generator.later=True]"]


@pytest.mark.slow  # the module's smoke study (a few minutes on 2 cores)
def test_merging_runs_with_different_n_is_refused(study, cache, tmp_path, capsys):
    a, = _single_runs(study, tmp_path, cache, ["gaussian"])
    other = json.loads((a / "results.json").read_text())
    other["meta"]["config"]["eval"]["gfid_n"] = 20
    (tmp_path / "n20").mkdir()
    (tmp_path / "n20" / "results.json").write_text(json.dumps(other))
    assert main(["report", str(tmp_path / "merged"), str(a), str(tmp_path / "n20")]) == 2
    err = capsys.readouterr().err
    assert "eval.gfid_n" in err and "do not compare" in err and "Traceback" not in err
    assert not (tmp_path / "merged" / "results.json").exists()


@pytest.mark.slow
def test_submitit_local_jobs_merge_to_the_numbers_of_one_run(study, cache, tmp_path):
    """--launcher submitit with the local executor: one job per prior (processes), merged into one study."""
    pytest.importorskip("submitit")
    from bench.launch import job_dir

    out = tmp_path / "launched"
    for prior in ("gaussian", "gmm"):  # the jobs find the fixture's finished stages: they only load and report
        shutil.copytree(study[0] / "stages", job_dir(out, prior, 0) / "stages")
    assert main([*FAST, "--priors", "gaussian,gmm", "--out", str(out), "--cache-dir", cache,
                 "--launcher", "submitit", "--slurm-cluster", "local"]) == 0
    launched = json.loads((out / "jobs" / "launch.json").read_text())
    assert [(j["prior"], j["training_seed"]) for j in launched["jobs"]] == [("gaussian", 0), ("gmm", 0)]
    assert launched["exit_codes"] == [0, 0]
    both = _single_runs(study, tmp_path / "both", cache, ["gaussian,gmm"])[0]
    got, want = ((d / "report.md").read_text() for d in (out, both))
    assert _md_tables_before(got) == _md_tables_before(want)


@pytest.mark.slow  # the module's smoke study, then Inception on the samples
def test_sample_writes_the_studys_gfid_samples_as_an_adm_npz_and_resumes(study, cache, tmp_path, monkeypatch):
    import numpy as np

    from bench.cache import Cache
    from bench.metrics import fid
    from bench.study import sample as S

    out, _, res, _ = study
    n = res["meta"]["config"]["eval"]["gfid_n"]
    whole = tmp_path / "whole.npz"  # the run's own sampling batch (eval.batch): the study's samples bit for bit
    assert main(["sample", str(out), "--prior", "gaussian", "--num-samples", str(n), "--out", str(whole),
                 "--cache-dir", cache]) == 0
    x = np.load(whole)["arr_0"]
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert list(np.load(whole)["arr_1"]) == [i % 10 for i in range(n)]
    side = json.loads((tmp_path / "whole.npz.json").read_text())
    assert side["prior"] == "gaussian" and side["sampler"]["steps"] == res["meta"]["config"]["eval"]["sample_steps"]
    _, _, ctx = S.load_run(out, "gaussian", 0, Cache(cache))
    feats = fid.inception_features(torch.from_numpy(x).permute(0, 3, 1, 2), 10, Cache(cache))
    want = res["priors"]["gaussian"]["per_training_seed"]["0"]["gfid_per_seed"][0]["gfid"]
    assert fid.fid_against_reference(feats, ctx.reference) == want
    # resuming: a finished chunk is kept (here a fake one of zeros), a damaged one is written again,
    # and the rest equals an uninterrupted run with the same chunks
    monkeypatch.setattr(S, "CHUNK", 4)
    quiet = dict(batch=4, cache=Cache(cache), log=lambda *a: None)
    fresh = np.load(S.sample_run(out, "gaussian", n, tmp_path / "fresh.npz", **quiet))["arr_0"]
    parts = tmp_path / "resumed.npz.parts"
    parts.mkdir()
    np.savez(parts / "chunk-000000.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8), arr_1=np.zeros(4, np.int64))
    (parts / "chunk-000001.npz").write_bytes(b"half a file")
    y = np.load(S.sample_run(out, "gaussian", n, tmp_path / "resumed.npz", **quiet))["arr_0"]
    assert (y[:4] == 0).all() and np.array_equal(y[4:], fresh[4:]) and not parts.exists()
    assert np.abs(fresh.astype(int) - x.astype(int)).max() <= 2  # another batch size: float rounding only
    assert main(["sample", str(out), "--prior", "dino", "--num-samples", "4", "--out", str(tmp_path / "d.npz"),
                 "--cache-dir", cache]) == 2


@pytest.mark.slow  # the module's smoke study, then its evaluation again
def test_reference_batch_of_the_held_out_images_gives_the_same_gfid(study, cache, tmp_path):
    import numpy as np

    from bench.cache import Cache
    from bench.metrics.adm_npz import write_batch
    from bench.metrics.standard import study_reference
    from bench.study.sample import load_run

    out, _, res, _ = study
    _, _, ctx = load_run(out, "gaussian", 0, Cache(cache))
    ref = write_batch(tmp_path / "ref.npz", ctx.held_out[0])  # the held-out images as an ADM reference batch
    d = tmp_path / "run"
    shutil.copytree(out / "stages", d / "stages")
    assert main([*FAST, "--priors", "gaussian", "--out", str(d), "--cache-dir", cache,
                 "--set", f"eval.reference_batch={ref}"]) == 0
    got = json.loads((d / "results.json").read_text())
    a, b = (r["priors"]["gaussian"]["per_training_seed"]["0"] for r in (res, got))
    assert [s["gfid"] for s in a["gfid_per_seed"]] == pytest.approx([s["gfid"] for s in b["gfid_per_seed"]], rel=1e-9)
    assert b["rfid"] == a["rfid"] and got["meta"]["evaluation"]["gfid_reference"]["batch"] == str(ref)
    assert set(got["priors"]["gaussian"]["cached"]) >= {"teacher", "start", "dmvae", "generator"}
    # stored statistics are what the published protocol reads
    mu, sigma = np.zeros(2048), np.eye(2048)
    stored = study_reference(write_batch(tmp_path / "stored.npz", ctx.held_out[0], mu=mu, sigma=sigma), Cache(cache))
    assert torch.equal(stored["mu"], torch.zeros(2048, dtype=torch.float64)) and "stored" in stored["source"]
    assert main([*FAST, "--priors", "gaussian", "--out", str(tmp_path / "bad"), "--cache-dir", cache,
                 "--set", f"eval.reference_batch={tmp_path / 'missing.npz'}"]) == 2


@pytest.mark.slow  # the module's smoke study, then two torchrun processes
def test_sample_over_two_torchrun_ranks_writes_the_single_process_file(study, cache, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from bench.cache import Cache
    from bench.study import sample as S

    out = study[0]
    script = tmp_path / "sample4.py"  # chunks of 4, so both ranks write some
    script.write_text("import sys\nfrom pathlib import Path\nfrom bench.cache import Cache\nfrom bench.study import sample as S\n"
                      f"S.CHUNK = 4\nS.sample_run(Path({str(out)!r}), 'gaussian', 14, Path(sys.argv[1]), batch=4, "
                      f"cache=Cache({cache!r}))\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "two.npz")], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1: samples" in proc.stdout + proc.stderr
    monkeypatch.setattr(S, "CHUNK", 4)
    one = S.sample_run(out, "gaussian", 14, tmp_path / "one.npz", batch=4, cache=Cache(cache), log=lambda *a: None)
    a, b = np.load(one), np.load(tmp_path / "two.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
