"""The report renderer (reports/): tables, figures, Markdown, self-contained HTML, bad input, no torch.

A small results folder is written here by hand in the runner's schema (bench/study/runner.py,
SCHEMA_VERSION 3: one training seed per row unless said otherwise, the row being the aggregate of
bench/study/aggregate.py beside its per_training_seed entries), so these tests run in seconds;
tests/test_study.py checks that a real run ends with a report.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import UserError
from reports import build_report
from reports.data import load_results, metric_directions
from reports.results import SCHEMA_VERSION, load_study
from reports.tables import kendall_tau

ROOT = Path(__file__).resolve().parent.parent
# name: (paper row, rfid, psnr, gfid mean, gfid std (sampling), MMD^2 after the DM stage (None: no DM stage),
#        generator converged)
PRIORS = {
    "gaussian": ("Gaussian", 30.0, 20.5, 60.0, 1.0, 0.01, True),    # 0.01 <= 3 x floor 0.004: reached
    "dino": ("DINO", 40.0, 19.0, 45.0, 1.5, 0.03, True),            # above max(3 x 0.004, 0.3 x 0.05): not
    "vae": ("VAE-baseline", 25.0, 22.0, 70.0, 0.5, None, False),
}
MATCH_RULE = "reached if MMD^2 after <= 3 x floor"
MATCH_RULE_MD = MATCH_RULE.replace("<", "&lt;")  # report.md writes <, > and & as entities
CONV_RULE = "converged if the last checkpoint's gFID-N is within 5% of the previous checkpoint's"
BEFORE = {"mmd2": 0.05, "sliced_w2": 0.5, "c2st_acc": 0.9}
FLOOR = {"mmd2": 0.004, "sliced_w2": 0.1, "c2st_acc": 0.51}
TEACHER = {"mmd2": 0.006, "sliced_w2": 0.12, "c2st_acc": 0.55}


def seed_entry(name, rfid, psnr, gmean, gstd, after, converged, tseed=0):
    """One training seed's entry (results.json priors.<name>.per_training_seed.<seed>)."""
    st = {"knn_accuracy": 0.8, "linear_probe_accuracy": 0.75, "silhouette": 0.1, "n": 100, "seed": 0}
    matching = None if after is None else {
        "before": BEFORE, "after": {"mmd2": after, "sliced_w2": 0.2, "c2st_acc": 0.6}, "floor": FLOOR,
        "teacher_samples": TEACHER, "reached": after <= 3 * FLOOR["mmd2"], "rule": MATCH_RULE,
        "started_at_prior": False, "threshold": 0.015}
    curve = None if after is None else [{"step": 0, "mmd2": 0.05, "sliced_w2": 0.5},
                                        {"step": 20, "mmd2": (0.05 + after) / 2, "sliced_w2": 0.3},
                                        {"step": 40, "mmd2": after, "sliced_w2": 0.2}]
    return {"status": "ok", "training_seed": tseed, "rfid": rfid, "rfid_n": 50, "psnr": psnr, "ssim": 0.7,
            "gfid": {"mean": gmean, "std": gstd, "seeds": [0, 1], "n": 50}, "gfid_n": 50,
            "kid": {"mean": gmean / 1000, "std": 0.001, "subset_size": 25, "subsets": 100}, "precision_recall": {},
            "gfid_per_seed": [], "convergence": [{"epoch": 0.5, "gfid": gmean * 2}, {"epoch": 1.0, "gfid": gmean}],
            "convergence_n": 20, "converged": {"converged": converged, "rule": CONV_RULE},
            "structure": {"reference": st, "dmvae": {**st, "knn_accuracy": 0.7 if name == "dino" else 0.6}},
            "matching": matching, "dm_curve": curve, "generator_norm": {"mean": 0.0, "scale": 1.0},
            "encoder_start": ({"kind": "scratch (KL-VAE baseline)"} if name == "vae" else
                              {"kind": "reference-ae" if name == "dino" else "plain-ae"}),
            "loss_terms": {"l1": True, "lpips": "unavailable: no weights"},
            "regulariser": {"kind": "KL" if name == "vae" else "distribution matching"},
            "tokenizer_updates": 28 if name == "vae" else 8,
            "timings": {"prior": 1.0, "dmvae": 10.0, "generator": 5.0, "evaluate": 3.0},
            "throughput_img_per_s": {"dmvae": 100.0, "generator": 900.0},
            "models": {"generator": {"size": "P", "params": 180_000, "epochs": 1.0}},
            "figure_data": {"tsne": f"figure_data/tsne_{name}.json", "recon_grid": f"figure_data/recon_{name}.png",
                            "sample_grid": f"figure_data/samples_{name}.png"}}


def _prior_entry(name, rfid, psnr, gmean, gstd, after, converged):
    """A prior's row from ONE training seed, written out as bench/study/aggregate.py makes it."""
    per = seed_entry(name, rfid, psnr, gmean, gstd, after, converged)
    m = per["matching"]
    return {**{k: v for k, v in per.items() if k not in ("gfid", "kid", "matching", "converged")},
            "gfid": {"mean": gmean, "std": gstd, "spread": "sampling seeds (one training seed)", "training_std": None,
                     "sampling_std": gstd, "n": 50, "seeds": [0, 1], "training_seeds": [0]},
            "kid": per["kid"],
            "spread": {"rfid": None, "psnr": None, "ssim": None, "gfid": None,
                       "over": "training seeds (sample std, ddof 1)", "training_seeds": [0]},
            "converged": {"all": converged, "rule": CONV_RULE, "per_training_seed": {"0": converged}},
            "matching": None if m is None else {
                "reached_all": m["reached"], "rule": MATCH_RULE, "per_training_seed": {"0": m["reached"]},
                **{k: m[k] for k in ("before", "after", "floor", "teacher_samples")}, "mean_over": "training seeds"},
            "cached": [], "per_training_seed": {"0": per}, "wall_s": 19.0}


def _meta(priors, training_seeds=(0,)):
    return {"schema_version": SCHEMA_VERSION, "ablation": None, "metrics": metric_directions(), "config_hash": "abc123", "git_commit": "deadbeef", "date": "2026-11-26",
            "device": {"type": "cpu"}, "world_size": 1, "wall_s": 12.0, "priors_requested": list(priors),
            "packages": {"torch": "x"}, "seeds": {"study": 0}, "weights": {}, "feature_source": {},
            "evaluation": {"gfid": {"n": 50}}, "stage_keys": {}, "timings": "own seconds per stage",
            "floors": {"fid_real_vs_real": {"value": 12.5, "n": 50, "images": "class-balanced train images"}},
            "provenance": {n: {"info": {"paper_row": PRIORS[n][0]}} for n in priors if n in PRIORS},
            "config": {"dataset": "fashion-mnist", "resolution": 32, "latent_channels": 4, "latent_size": 8,
                       "features": "local", "training_seeds": list(training_seeds), "start": "auto",
                       "eval": {"ref_n": 50, "gfid_n": 50, "seeds": [0, 1], "convergence_n": 20,
                                "converged_within": 0.05, "match_n": 64, "ref_split": "test", "sample_steps": 10,
                                "cfg_scale": 1.0, "tsne_per_class": 5}}}


def write_study(out: Path, priors=tuple(PRIORS), rows: dict | None = None, training_seeds=(0,)) -> Path:
    """A results folder; `rows` replaces the hand-written one-seed rows (e.g. aggregates of several seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    res = {"meta": _meta(priors, training_seeds), "priors": {}}
    for name in priors:
        res["priors"][name] = rows[name] if rows else _prior_entry(name, *PRIORS[name][1:])
        fd = out / "figure_data"
        fd.mkdir(exist_ok=True)
        labels = [i % 10 for i in range(50)]
        (fd / f"tsne_{name}.json").write_text(json.dumps(
            {"reference_xy": rng.normal(size=(50, 2)).tolist(), "reference_labels": labels,
             "dmvae_xy": rng.normal(size=(50, 2)).tolist(), "dmvae_labels": labels}))
        for kind in ("recon", "samples"):
            plt.imsave(fd / f"{kind}_{name}.png", rng.integers(0, 255, (65, 329)).astype(np.uint8), cmap="gray")
    (out / "results.json").write_text(json.dumps(res))
    return out


@pytest.fixture
def study(tmp_path):
    return write_study(tmp_path / "study")


def _tables(md: str) -> list[list[str]]:
    """The Markdown tables (lists of row lines) of a document."""
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables + ([cur] if cur else [])


def _table(md: str, first_column: str, needle: str) -> list[str]:
    return next(t for t in _tables(md) if t[0].startswith(f"| {first_column} |") and needle in t[0])


def _bold(table: list[str]) -> set[tuple[str, int]]:
    """(prior, column index) of the cells marked best."""
    return {(row.split(" | ")[0][2:], j) for row in table[2:] for j, c in enumerate(row.strip("|").split(" | "))
            if c.strip().startswith("**")}


def test_table1_golden(study):
    md_path, _ = build_report(study)
    md = md_path.read_text()
    table1 = [row.replace("**", "") for row in _table(md, "prior", "paper row")]  # best cells: tested below
    assert table1 == [
        "| prior | paper row | status | rFID-50 | PSNR | SSIM | gFID-50 (mean ± std over sampling seeds, 1 training "
        "seed) | q(z) reached p_r | generator converged | KID (mean) | kNN acc. | lin. probe | silhouette "
        "| rFID (reported) | PSNR (reported) | gFID-5k (reported) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| gaussian | Gaussian | ok | 30.00 | 20.50 | 0.700 | 60.00 ± 1.00 | yes | yes | 0.0600 | 0.600 | 0.750 "
        "| 0.100 | 0.47 | 27.4 | 26.6 |",
        "| dino | DINO | ok | 40.00 | 19.00 | 0.700 | 45.00 ± 1.50 | NO | yes | 0.0450 | 0.700 | 0.750 | 0.100 "
        "| 0.81 | 21.8 | 13.1 |",
        "| vae | VAE-baseline | ok | 25.00 | 22.00 | 0.700 | 70.00 ± 0.50 | — (no DM stage) | NO | 0.0700 | 0.600 "
        "| 0.750 | 0.100 | 0.54 | 25.7 | 27.3 |",
    ]
    assert "Floor of FID at this N: 50 real train images against the held-out reference give FID 12.50" in md
    assert f"- q(z) reached p_r: {MATCH_RULE_MD}." in md and f"- generator converged: {CONV_RULE}." in md
    # our gFID order dino < gaussian < vae; the paper's DINO 13.1 < Gaussian 26.6 < VAE 27.3: tau = +1
    assert "Kendall tau-b = +1.00 over 3 priors" in md
    assert "dino &lt; gaussian | 15.00 | 1.80 | yes" in md and "gaussian &lt; vae | 10.00 | 1.12 | yes" in md
    assert "dino &lt; vae | 25.00 | 1.58 | yes" in md  # every pair, not only neighbours (&lt;: escaped)
    assert "Best (dino) vs worst (vae): gap 25.00 vs twice the larger std 3.00: resolved." in md
    assert "The std is over sampling seeds with one trained model per prior" in md
    # every table is well formed: the same number of cells in every row
    for t in _tables(md):
        counts = {len(re.findall(r"(?<!\\)\|", row)) for row in t}
        assert len(counts) == 1, t[0]


def test_table1_marks_the_best_generation_and_structure_cells(study):
    table1 = _table(build_report(study)[0].read_text(), "prior", "paper row")
    # gFID (6) and KID (9): dino lowest; kNN acc. (10): dino highest; probe and silhouette all equal
    assert {("dino", 6), ("dino", 9), ("dino", 10)} <= _bold(table1)
    assert not {c for c in _bold(table1) if c[1] in (7, 8, 11, 12)}  # yes/NO cells; equal values


def test_table1_marks_the_best_reconstruction_cells(study):
    table1 = _table(build_report(study)[0].read_text(), "prior", "paper row")
    assert {("vae", 3), ("vae", 4)} <= _bold(table1)  # vae: lowest rFID 25.00, highest PSNR 22.00


def test_matching_and_dm_curve_tables(study):
    md = build_report(study)[0].read_text()
    assert _table(md, "prior", "MMD² before → after") == [
        "| prior | encoder start | MMD² before → after | MMD² floor | MMD² S_real samples | C2ST acc. before → after "
        "| C2ST floor | sliced W2 before → after (floor) | reached |",
        "|---|---|---|---|---|---|---|---|---|",
        "| gaussian | plain-ae | 0.0500 → 0.0100 | 0.0040 | 0.0060 | 0.900 → 0.600 | 0.510 | 0.500 → 0.200 (0.100) "
        "| yes |",
        "| dino | reference-ae | 0.0500 → 0.0300 | 0.0040 | 0.0060 | 0.900 → 0.600 | 0.510 | 0.500 → 0.200 (0.100) "
        "| NO |",
        "| vae | — | " + " | ".join(["— (no DM stage)"] * 6) + " | — |",
    ]
    assert f"- Rule: {MATCH_RULE_MD}." in md
    assert _table(md, "prior", "it 0") == [  # the vae row has no DM stage, so no curve
        "| prior | it 0 | it 20 | it 40 |", "|---|---|---|---|",
        "| gaussian | 0.0500 | 0.0300 | 0.0100 |", "| dino | 0.0500 | 0.0400 | 0.0300 |"]
    structure = _table(md, "prior", "kNN acc. ref / DMVAE")
    assert structure[0] == "| prior | kNN acc. ref / DMVAE | lin. probe ref / DMVAE | silhouette ref / DMVAE |"
    assert "DM score" not in md and "dm_score" not in md


def test_fixture_rows_are_what_the_runner_aggregates():
    """The hand-written one-seed rows above hold what bench/study/aggregate.py makes of their seed entry."""
    from bench.study.aggregate import aggregate

    for name, spec in PRIORS.items():
        agg = aggregate({"0": seed_entry(name, *spec[1:])})
        row = _prior_entry(name, *spec[1:])
        for key in ("rfid", "psnr", "ssim", "gfid", "kid", "spread", "converged", "matching", "structure",
                    "convergence", "dm_curve", "encoder_start"):
            assert agg[key] == row[key], (name, key)


def test_training_seed_rows_show_their_spread(tmp_path):
    """Two training seeds per prior, aggregated as the runner does: the ± std of rFID/PSNR/SSIM, seed counts
    in the matching and convergence cells, and the gFID pairs judged by the training-seed spread."""
    from bench.study.aggregate import aggregate

    rows = {}
    for name, (_, rfid, psnr, g, gstd, after, conv) in PRIORS.items():
        seeds = {"0": seed_entry(name, rfid, psnr, g, gstd, after, conv),
                 "1": seed_entry(name, rfid + 2, psnr - 1, g + 4, gstd, after and 0.004, False, 1)}
        rows[name] = aggregate(seeds)
        rows[name].update(status="ok", timings={"dmvae": 20.0}, per_training_seed=seeds)
    md = build_report(write_study(tmp_path / "s", rows=rows, training_seeds=(0, 1)))[0].read_text()
    table1 = [row.replace("**", "") for row in _table(md, "prior", "paper row")]
    assert "gFID-50 (mean ± std over 2 training seeds)" in table1[0]
    # gaussian: rFID 30, 32 -> 31.00 ± 1.41; PSNR 20.5, 19.5; gFID 60, 64 -> 62.00 ± 2.83; seed 1 reached, not converged
    assert table1[2] == ("| gaussian | Gaussian | ok | 31.00 ± 1.41 | 20.00 ± 0.71 | 0.700 ± 0.000 | 62.00 ± 2.83 "
                         "| yes (2/2 seeds) | NO (1/2 seeds) | 0.0620 | 0.600 | 0.750 | 0.100 | 0.47 | 27.4 | 26.6 |")
    # dino: seed 0 did not reach p_r, seed 1 did (0.004 <= 3 x 0.004)
    assert "| NO (1/2 seeds) | NO (1/2 seeds) |" in table1[3]
    assert "| — (no DM stage) | NO (0/2 seeds) |" in table1[4]
    assert "The std is over training seeds" in md and "dino &lt; gaussian | 15.00 | 4.00 | yes" in md


def test_kendall_tau_matches_scipy():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, 7).astype(float), rng.integers(0, 4, 7).astype(float)  # with ties
        names = [str(i) for i in range(7)]
        ours, _ = kendall_tau(dict(zip(names, a)), dict(zip(names, b)))
        ref = kendalltau(a, b).statistic
        assert (ours is None and np.isnan(ref)) or ours == pytest.approx(ref)
    assert kendall_tau({"a": 1.0}, {"a": 2.0})[0] is None


def test_report_has_every_section_and_figure(study):
    md_path, html_path = build_report(study)
    md = md_path.read_text()
    for heading in ("Reference priors (Table 1 style)", "Did q(z) reach p_r?", "Latent structure", "Convergence",
                    "System level (Table 3 style)", "Reconstructions and samples", "Provenance"):
        assert f"## {heading}" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/convergence.png" in links and "figures/tsne.png" in links and "figures/recon_dino.png" in links
    assert plt.imread(study / "figures" / "recon_dino.png").shape[:2] == (3 * 65, 3 * 329)  # enlarged 3x
    assert len(links) == 2 + 2 * len(PRIORS)
    for rel in links:  # relative files, as GitHub shows them next to report.md
        assert not rel.startswith(("/", "http")) and (study / rel).is_file(), rel
    assert "| reported | DMVAE | 21.5 | 0.64 | 800 | 675M | 1.64 | 216.3 |" in md  # Table 3, labelled
    assert "| this run | DMVAE, dino prior |" in md and "not measured" in md
    assert "abc123" in md and "deadbeef" in md  # provenance
    assert md.count("not the values themselves") >= 2  # the caveat is visible


def test_html_is_self_contained_and_escaped(study):
    res = json.loads((study / "results.json").read_text())
    res["priors"]["bad<script>"] = {"status": "failed", "reason": "NaN at step 3 <b>&amp;</b>"}
    (study / "results.json").write_text(json.dumps(res))
    _, html_path = build_report(study)
    page = html_path.read_text()
    assert "<script" not in page and "bad&lt;script&gt;" in page and "&lt;b&gt;&amp;amp;&lt;/b&gt;" in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:  # every inline image is a real PNG
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(href|src)="(http|//|file:)', page)


def test_failed_prior_has_no_numbers(study):
    res = json.loads((study / "results.json").read_text())
    res["priors"]["dino"] = {"status": "failed", "reason": "non-finite loss at step 12 of the DM stage",
                             "timings": {"prior": 1.0}}
    (study / "results.json").write_text(json.dumps(res))
    md = build_report(study)[0].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| dino | DINO |"))
    assert "failed: non-finite loss at step 12" in row
    assert row.split(" | ")[3:13] == ["—"] * 10  # nothing that was not measured
    assert "Prior 'dino' is failed" in md


def test_missing_figure_data_is_left_out_with_a_note(study):
    (study / "figure_data" / "tsne_dino.json").unlink()
    (study / "figure_data" / "samples_vae.png").unlink()
    (study / "figure_data" / "recon_gaussian.png").write_bytes(b"not a png")
    md = build_report(study)[0].read_text()
    assert "t-SNE panel of 'dino' left out" in md and "sample grid of 'vae' is left out" in md
    assert "recon grid of 'gaussian' is left out: recon_gaussian.png is unreadable" in md
    assert "figures/tsne.png" in md  # the other panels are still drawn


def test_bad_input_gets_a_clear_message(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "No results.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "missing").exists()
    out = write_study(tmp_path / "old")
    res = json.loads((out / "results.json").read_text())
    res["meta"]["schema_version"] = 99
    (out / "results.json").write_text(json.dumps(res))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "schema version 99" in err and f"(it writes {SCHEMA_VERSION})" in err and "Traceback" not in err
    (out / "results.json").write_text('{"meta": {"schema_ver')
    with pytest.raises(UserError, match="not valid JSON"):
        build_report(out)


def test_ablation_folder_gives_table2_with_reported_rows(tmp_path):
    out = tmp_path / "abl"
    for v, g in (("1", 50.0), ("10", 45.0)):
        d = write_study(out / "ablate" / f"dmvae.dm_weight={v}", ("dino",))
        res = json.loads((d / "results.json").read_text())
        res["priors"]["dino"]["gfid"]["mean"] = g
        res["meta"]["ablation"] = {"key": "dmvae.dm_weight", "value": v}  # results.json says what it ablates
        (d / "results.json").write_text(json.dumps(res))
    md = build_report(out)[0].read_text()
    assert "## Ablations (Table 2 style)" in md and "Table 2 style: ablation of dmvae.dm_weight" in md
    assert "| this run | dmvae.dm_weight=1 | dino |" in md and "**45.00 ± 1.50**" in md
    assert "| reported | lambda 100 | DINO (paper) | 19.6 | 0.82 | 12.6 | — | — |" in md
    assert "MMD² before → after (floor)" in md
    assert ("| this run | dmvae.dm_weight=10 | dino | 19.00 | 40.00 | **45.00 ± 1.50** | 0.0500 → 0.0300 (0.0040) "
            "| ok |") in md


def test_table2_reads_the_ablation_from_results_json_not_the_folder_name(tmp_path):
    out = tmp_path / "abl"
    d = write_study(out / "ablate" / "renamed-by-hand", ("dino",))
    res = json.loads((d / "results.json").read_text())
    res["meta"]["ablation"] = {"key": "dmvae.dm_cfg", "value": "3"}
    (d / "results.json").write_text(json.dumps(res))
    md = build_report(out)[0].read_text()
    assert "Table 2 style: ablation of dmvae.dm_cfg" in md and "| this run | dmvae.dm_cfg=3 | dino |" in md
    assert set(load_results(out)["ablation"]) == {"dmvae.dm_cfg=3"}


def test_schema_2_is_upgraded_on_reading_and_inclusive_times_are_refused(tmp_path, capsys):
    """Version 2 kept the ablation in the folder name and had no metric directions; the reader fills both
    in. Version-2 files from before own stage times (no meta.timings) are refused in one paragraph."""
    d = write_study(tmp_path / "old" / "ablate" / "dmvae.dm_weight=20", ("dino",))
    res = json.loads((d / "results.json").read_text())
    for k in ("ablation", "metrics"):
        del res["meta"][k]
    res["meta"]["schema_version"] = 2
    (d / "results.json").write_text(json.dumps(res))
    study = load_study(tmp_path / "old")
    meta = study.ablations["dmvae.dm_weight=20"]["meta"]
    assert meta["ablation"] == {"key": "dmvae.dm_weight", "value": "20"} and meta["upgraded_from"] == 2
    assert meta["metrics"]["gfid"]["higher_is_better"] is False and meta["metrics"]["psnr"]["higher_is_better"]
    del res["meta"]["timings"]
    (d / "results.json").write_text(json.dumps(res))
    assert main(["report", str(tmp_path / "old")]) == 2
    err = capsys.readouterr().err
    assert "INCLUSIVE stage times" in err and err.count("\n") == 1 and "Traceback" not in err


def test_toy_section_when_present(study):
    toy = study / "toy2d"
    toy.mkdir()
    plt.imsave(toy / "toy2d.png", np.zeros((20, 20)), cmap="gray")
    (toy / "toy2d.json").write_text(json.dumps({"config": {"target": "s_curve"}, "config_hash": "t1", "figure": "toy2d.png",
                                                "teacher": {"sliced_w2": 0.035}, "timings_s": {"dm": 80.0},
                                                "objectives": {"dm": {"status": "ok", "sliced_w2": 0.0154,
                                                                      "outside_share": 0.031}}}))
    md = build_report(study)[0].read_text()
    assert "## 2D toy (paper Fig. 3)" in md and "| dm | ok | 0.0154 | 0.0310 | 80.0 |" in md and "(toy2d/toy2d.png)" in md


@pytest.mark.slow
def test_report_code_does_not_import_torch(study):
    code = ("import sys; from bench.cli import main; rc = main(['report', sys.argv[1]]); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code, str(study)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (study / "report.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# After the page's load event, count broken images and tables; the report itself has no scripts.
PROBE = ('<script>window.addEventListener("load",()=>{let bad=0;for(const i of document.images){if(!i.complete||'
         'i.naturalWidth===0){bad++;console.error("broken image: "+i.alt)}}console.log("probe: "+document.images.length'
         '+" images, "+bad+" broken, "+document.querySelectorAll("table").length+" tables")})</script>')


def _chromium(args: list[str], page: Path) -> str:
    r = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    return r.stdout + r.stderr


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="Debian chromium is not installed (scripts/setup.sh installs it as root; CI must have it)")
@pytest.mark.slow
def test_html_in_headless_chromium(study, tmp_path):
    assert CHROMIUM, "chromium is missing: scripts/setup.sh installs the Debian package 'chromium'"
    _, page = build_report(study)
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    log = _chromium(["--dump-dom"], probed)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1, console  # only the probe's own line: no errors, no broken images
    n_tables = page.read_text().count("<table>")
    assert f"probe: {2 + 2 * len(PRIORS)} images, 0 broken, {n_tables} tables" in console[0]
    # the control: a broken image is caught by the same probe
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img alt="x" src="data:image/png;base64,AAAA">' + PROBE + "</body></html>")
    assert "broken image: x" in _chromium(["--dump-dom"], bad)
    shot = tmp_path / "shot.png"
    _chromium(["--hide-scrollbars", "--window-size=1300,2400", f"--screenshot={shot}"], page)
    img = plt.imread(shot)
    assert img.shape[:2] == (2400, 1300)
    ink = (img[..., :3].mean(-1) < 0.5).mean(0)  # dark pixels per column: text, tables and figures
    assert img[..., :3].std() > 0.1 and (ink > 0).mean() > 0.5


EXAMPLE = ROOT / "reports" / "examples" / "fashion-mnist-cpu"


@pytest.mark.skipif(not (EXAMPLE / "results.json").exists(), reason="no committed study example")
def test_load_results_reads_the_committed_example():
    """The committed example as data: the documented columns, one row per (prior, training seed, metric),
    the same numbers as its results.json and its results.csv."""
    from reports import load_results
    from reports.data import COLUMNS

    frame = load_results(EXAMPLE)
    assert list(frame.columns) == COLUMNS
    res = json.loads((EXAMPLE / "results.json").read_text())
    for prior, row in res["priors"].items():
        for seed, e in row.get("per_training_seed", {}).items():
            g = frame[(frame.prior == prior) & (frame.training_seed == int(seed)) & (frame.metric == "gfid")]
            assert len(g) == 1 and g.value.iloc[0] == e["gfid"]["mean"] and g.n.iloc[0] == e["gfid"]["n"]
            assert g.higher_is_better.iloc[0] is False or not g.higher_is_better.iloc[0]
    assert {"rfid", "psnr", "gfid", "mmd2_after", "reached_prior", "generator_converged"} <= set(frame.metric)
    csv = pd.read_csv(EXAMPLE / "results.csv")
    assert list(csv.columns) == COLUMNS and len(csv) == len(frame)
    assert np.allclose(csv.sort_values(["prior", "training_seed", "metric"]).value,
                       frame.sort_values(["prior", "training_seed", "metric"]).value)


# ------------------------------------------------------------------ guidance sweep (eval.cfg_scales)
K = 10


def sweep_entry(gmean: float, scales=(1.0, 2.0, 3.0), per_class: bool = True) -> dict:
    """One training seed's guidance record (bench/study/guidance.py): gFID falls as 1 / w from Table 1's value,
    class k's FID is 100 + 10 k - 5 w (None when the classes were too small to measure)."""
    n_per = 5 if per_class else 1
    return {"scales": list(scales), "table1_scale": 1.0, "n": 50, "seeds": [0, 1], "k": 3,
            "per_scale": [{"scale": w, "gfid": {"mean": gmean / w, "std": 0.5},
                           "precision": {"mean": 0.5 + w / 10, "std": 0.01}, "recall": {"mean": 0.6 - w / 10, "std": 0.02},
                           "per_seed": [], "per_class_fid": [100.0 + 10 * k - 5 * w if per_class else None
                                                             for k in range(K)]} for w in scales],
            "per_class": {"seed": 0, "names": [f"class{k}" for k in range(K)], "n": [n_per] * K, "n_ref": [n_per] * K,
                          "n_floor": [n_per] * K, "floor": [80.0 + k if per_class else None for k in range(K)]}}


def write_swept_study(out: Path, scales=(1.0, 2.0, 3.0), per_class: bool = True, tseed: int = 0) -> Path:
    """A results folder whose priors ran the guidance sweep (one training seed `tseed`), as the runner writes it."""
    from bench.study.aggregate import aggregate

    rows = {}
    for name in PRIORS:
        seed = {**seed_entry(name, *PRIORS[name][1:], tseed=tseed), "guidance": sweep_entry(PRIORS[name][3], scales,
                                                                                            per_class)}
        seed["timings"] = {**seed["timings"], "guidance": 2.0}
        row = _prior_entry(name, *PRIORS[name][1:])
        rows[name] = {**row, "per_training_seed": {str(tseed): seed}, "guidance": aggregate({str(tseed): seed})["guidance"],
                      "timings": seed["timings"]}
    out = write_study(out, rows=rows, training_seeds=(tseed,))
    res = json.loads((out / "results.json").read_text())
    res["meta"]["config"]["eval"]["cfg_scales"] = list(scales)
    res["meta"]["evaluation"]["guidance"] = {"scales": list(scales), "table1_scale": 1.0}
    (out / "results.json").write_text(json.dumps(res))
    return out


def test_guidance_sweep_section_table_figure_and_per_class_fid(tmp_path):
    out = write_swept_study(tmp_path / "swept")
    md = build_report(out)[0].read_text()
    assert md.index("## Reference priors (Table 1 style)") < md.index("## Guidance sweep (CFG)") \
        < md.index("## Did q(z) reach p_r?")
    assert "These numbers are GUIDED" in md
    sweep = _table(md, "prior", "CFG scale")
    assert sweep[0] == ("| prior | CFG scale | gFID-50 (mean ± std) | precision (k = 3) | recall (k = 3) | std over "
                        "| samples |")
    assert sweep[2:5] == [
        "| gaussian | 1 | 60.00 ± 0.50 | 0.600 ± 0.010 | **0.500 ± 0.020** | sampling seeds (1 training seed) "
        "| Table 1's (same samples) |",
        "| gaussian | 2 | 30.00 ± 0.50 | 0.700 ± 0.010 | 0.400 ± 0.020 | sampling seeds (1 training seed) | guided |",
        "| gaussian | 3 | **20.00 ± 0.50** | **0.800 ± 0.010** | 0.300 ± 0.020 | sampling seeds (1 training seed) "
        "| guided |"]
    assert len(sweep) == 2 + 3 * len(PRIORS)
    plain = build_report(write_study(tmp_path / "plain"))[0].read_text()
    assert _table(md, "prior", "paper row") == _table(plain, "prior", "paper row")  # Table 1 as without a sweep
    # the figure: PNG in the report, its data beside it
    assert "](figures/guidance_sweep.png)" in md and plt.imread(out / "figures" / "guidance_sweep.png").std() > 0
    data = json.loads((out / "figures" / "guidance_sweep.json").read_text())
    assert [p["scale"] for p in data["priors"]["dino"]] == [1.0, 2.0, 3.0]
    assert [p["gfid"] for p in data["priors"]["dino"]] == [45.0, 22.5, 15.0] and data["priors"]["dino"][0]["std"] == 0.5
    # per-class FID: the best and worst three classes at Table 1's scale, each beside its floor and counts
    per = _table(md, "prior", "per-class floor")
    assert per[0] == ("| prior | rank (1 = best) | class | images: samples / reference / floor | per-class floor "
                      "| FID at CFG 1 | FID at CFG 2 | FID at CFG 3 |")
    dino = [row for row in per[2:] if row.startswith("| dino |")]
    assert dino[0] == "| dino | 1 of 10 | 0: class0 | 5 / 5 / 5 | 80.00 | 95.00 | 90.00 | 85.00 |"
    assert dino[-1] == "| dino | 10 of 10 | 9: class9 | 5 / 5 / 5 | 89.00 | 185.00 | 180.00 | 175.00 |"
    assert [row.split(" | ")[1] for row in dino] == ["1 of 10", "2 of 10", "3 of 10", "8 of 10", "9 of 10", "10 of 10"]
    assert "Classes ranked by their FID at CFG 1 (Table 1's samples): gaussian, dino, vae." in md
    assert "| prior | prior build | teacher | start | dmvae | generator | evaluate | guidance | total |" in md
    assert "GUIDED" in (out / "report.html").read_text()


def test_no_sweep_means_no_guidance_section_and_no_sweep_rows(study):
    md = build_report(study)[0].read_text()
    assert "Guidance sweep" not in md and "Per-class FID" not in md and "guidance" not in md.split("## Time")[1]
    assert not list((study / "figures").glob("guidance*"))
    frame = load_results(study)
    assert not frame.metric.str.endswith("_cfg").any()
    assert (frame[frame.metric == "gfid"].cfg_scale == 1.0).all() and frame[frame.metric == "rfid"].cfg_scale.isna().all()


def test_sweep_rows_in_the_tidy_frame_carry_their_scale(tmp_path):
    from reports.data import guidance_summary, summary

    out = write_swept_study(tmp_path / "swept")
    frame = load_results(out)
    rows = frame[(frame.prior == "dino") & (frame.metric == "gfid_cfg")]
    assert list(rows.cfg_scale) == [1.0, 2.0, 3.0] and list(rows.value) == [45.0, 22.5, 15.0]
    assert (rows.n == 50).all() and (rows.sampling_seeds == "0 1").all() and not rows.higher_is_better.any()
    pr = frame[(frame.prior == "dino") & (frame.metric == "precision_cfg")]
    assert list(pr.value) == pytest.approx([0.6, 0.7, 0.8]) and pr.higher_is_better.all()
    assert frame[(frame.prior == "dino") & (frame.metric == "gfid")].cfg_scale.tolist() == [1.0]  # Table 1's scale
    res = json.loads((out / "results.json").read_text())
    assert "gfid_cfg" not in summary(res).index.get_level_values("metric")  # Table 1's frame: no sweep rows
    assert guidance_summary(res).loc[("dino", "gfid_cfg", 2.0), "mean"] == 22.5
    assert metric_directions()["gfid_cfg"]["higher_is_better"] is False


def test_per_class_fid_that_could_not_be_measured_is_a_note(tmp_path):
    out = write_swept_study(tmp_path / "small", per_class=False)
    md = build_report(out)[0].read_text()
    assert "## Guidance sweep (CFG)" in md and "| prior | rank (1 = best) |" not in md
    assert "Per-class FID of 'dino' is not measured: with gFID-50 over 10 classes each class has 1 to 1 samples" in md


def test_merge_pools_a_run_with_a_sweep_and_one_without(tmp_path):
    """eval.cfg_scales says what a run computed beyond Table 1, not how Table 1 was computed: such runs pool."""
    from reports.merge import merge_runs

    plain = write_study(tmp_path / "plain")  # training seed 0, no sweep (written before the setting existed)
    swept = write_swept_study(tmp_path / "swept", tseed=1)
    res, _ = merge_runs([plain, swept])
    assert list(res["priors"]) == list(PRIORS)  # one row per prior, no labels
    row = res["priors"]["dino"]
    assert sorted(row["per_training_seed"]) == ["0", "1"] and row["gfid"]["training_seeds"] == [0, 1]
    assert row["guidance"]["training_seeds"] == [1] and row["guidance"]["per_scale"][1]["gfid"]["mean"] == 22.5
    assert res["meta"]["config"]["eval"]["cfg_scales"] == [1.0, 2.0, 3.0]
    assert res["meta"]["evaluation"]["guidance"]["scales"] == [1.0, 2.0, 3.0]
    other = write_swept_study(tmp_path / "other", scales=(1.0, 1.5), tseed=2)  # another sweep: pooled per scale
    res, _ = merge_runs([swept, other])
    g = res["priors"]["dino"]["guidance"]
    assert [w["scale"] for w in g["per_scale"]] == [1.0, 1.5, 2.0, 3.0]
    assert [w["training_seeds"] for w in g["per_scale"]] == [[1, 2], [2], [1], [1]]
    assert res["meta"]["config"]["eval"]["cfg_scales"] == [1.0, 1.5, 2.0, 3.0]
    differs = json.loads((other / "results.json").read_text())
    differs["meta"]["config"]["eval"]["cfg_scale"] = 2.0  # Table 1 itself guided otherwise: never pooled
    (other / "results.json").write_text(json.dumps(differs))
    with pytest.raises(UserError, match="eval.cfg_scale "):
        merge_runs([swept, other])
