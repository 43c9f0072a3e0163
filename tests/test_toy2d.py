"""The 2D toy: metrics on known cases, a fast DM run below a bound, failure handling, the CLI."""
import json
import math

import pytest
import torch

from bench.cli import main
from bench.config import build
from bench.toy2d import metrics, targets
from bench.toy2d.run import ToyConfig, run_toy


@pytest.fixture(scope="module")
def evaluator():
    return metrics.ToyEvaluator(targets.s_curve, metrics.MetricSettings(n_ref=4096))


def test_s_curve_target_matches_spec():
    x = targets.s_curve(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and x.abs().max() <= 1.0
    skel = targets.s_curve.skeleton(200)
    steps = (skel[1:] - skel[:-1]).norm(dim=1)
    assert steps.std() / steps.mean() < 0.01  # evenly spaced by arc length
    # every sample lies near the skeleton (noise std 0.06 across + <= 0.03 isotropic)
    d = torch.cdist(x, targets.s_curve.skeleton(2000)).min(dim=1).values
    assert d.quantile(0.99) < 0.25


@pytest.mark.slow
def test_metrics_separate_good_from_bad(evaluator):
    g = torch.Generator().manual_seed(5)
    good = evaluator(targets.s_curve(1536, g))
    assert good["sliced_w2"] < 0.05 and good["coverage"] > 0.95 and good["outside_share"] < 0.05
    collapsed = evaluator(torch.zeros(1536, 2) + 0.01 * torch.randn(1536, 2, generator=g))
    assert collapsed["coverage"] < 0.2 and collapsed["sliced_w2"] > 0.3
    far = evaluator(torch.full((100, 2), 5.0))
    assert far["outside_share"] == 1.0 and far["coverage"] == 0.0
    assert good["energy_distance"] < collapsed["energy_distance"]


def test_sliced_w2_of_a_shift_is_the_projected_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    shifted = x + torch.tensor([0.3, 0.0], dtype=torch.float64)
    # W2 along x is 0.3, along y 0: sliced-W2 = sqrt(mean(0.09, 0)) up to sampling error
    assert math.isclose(metrics.sliced_w2(shifted, x, dirs), math.sqrt(0.045), rel_tol=0.05)


def _tiny(**kw):
    base = dict(teacher_steps=1200, steps=400, k=2, n_points=512, hidden=64, depth=2,
                objectives=("dm",))
    return build(ToyConfig, {**base, **kw})


@pytest.mark.slow
def test_fast_dm_run_beats_bound(tmp_path, evaluator):
    res = run_toy(_tiny(), tmp_path, log=lambda *_: None)
    start = evaluator((torch.rand(512, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 1.5)
    dm = res["objectives"]["dm"]
    assert dm["status"] == "ok"
    assert dm["sliced_w2"] < 0.1 < start["sliced_w2"] / 3
    assert dm["coverage"] >= 0.8
    saved = json.loads((tmp_path / "toy2d.json").read_text())
    assert saved["objectives"]["dm"]["sliced_w2"] == dm["sliced_w2"]
    assert (tmp_path / "toy2d.png").stat().st_size > 0


@pytest.mark.slow
def test_non_finite_loss_is_reported_not_written(tmp_path):
    res = run_toy(_tiny(teacher_steps=50, steps=4, points_lr=1e30, objectives=("dm",)),
                  tmp_path, log=lambda *_: None)
    entry = res["objectives"]["dm"]
    assert entry["status"] == "failed" and "step" in entry["reason"] and "'dm'" in entry["reason"]
    assert "sliced_w2" not in entry
    assert "NaN" not in (tmp_path / "toy2d.json").read_text()


@pytest.mark.parametrize("argv, needle", [
    (["toyy"], "Valid sub-commands: priors, report, sample, score, toy2d"),
    (["toy2d", "--objectives", "dm,bogus", "--dry-run"], "Unknown objective 'bogus'"),
    (["toy2d", "--target", "s-curve", "--dry-run"], "Did you mean 's_curve'"),
    (["toy2d", "--set", "stepz=3", "--dry-run"], "Unknown setting 'stepz'"),
    (["toy2d", "--set", "steps=many", "--dry-run"], "expects int"),
    (["--priors", "gaussian,dinoo"], "Did you mean 'dino'"),
])
def test_cli_bad_input_is_one_clear_paragraph(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_dry_run_prints_resolved_config(capsys):
    assert main(["toy2d", "--preset", "fast", "--set", "k=3", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["k"] == 3 and cfg["steps"] == 600 and cfg["objectives"] == list(ToyConfig().objectives)
