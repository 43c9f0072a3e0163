"""bench.metrics.matching: statistics against their floor, and the "reached" rule.

Margins measured with the fixture below (data seed 100, Matcher seed 0; data seeds 101-102 alike):
floor mmd2 1.5e-3, sliced_w2 0.110, c2st 0.47; a third N(0, I) draw reads 1.02x / 0.99x the floor, c2st 0.50;
shift +0.5: mmd2 49x floor, sliced_w2 4.6x, c2st 0.96; 10-cluster mixture: mmd2 5.4x floor, c2st 0.97,
while sliced_w2 reads only 2.7x floor (under the 3x bar).
"""
import json

import pytest
import torch

from bench.metrics.matching import RULE, SETTINGS, Matcher, reached

N, D = 500, 64


def _normal(g: torch.Generator, n: int = N) -> torch.Tensor:
    return torch.randn(n, D, generator=g)


def _mixture(g: torch.Generator, k: int = 10, within: float = 0.1) -> torch.Tensor:
    """k Gaussian clusters (within-cluster variance `within`), standardised to unit variance per coordinate."""
    centres = torch.randn(k, D, generator=g) * (1 - within) ** 0.5  # (k, D)
    x = centres[torch.randint(k, (N,), generator=g)] + torch.randn(N, D, generator=g) * within ** 0.5  # (N, D)
    return (x - x.mean(0)) / x.std(0)


@pytest.fixture(scope="module")
def setup():
    """A Matcher on one N(0, I) draw and its floor from a second; a third, independent draw stays for tests."""
    g = torch.Generator().manual_seed(100)
    ref, ref_b, other = _normal(g), _normal(g), _normal(g)
    m = Matcher(ref.view(N, 1, 8, 8), seed=0)  # latents are (N, C, h, w)
    return m, m.floor(ref_b.view(N, 1, 8, 8)), other.view(N, 1, 8, 8), g


def test_settings_and_rule_are_reportable():
    assert isinstance(RULE, str) and "3" in RULE and "0.3" in RULE
    assert json.loads(json.dumps(SETTINGS)) == SETTINGS


def test_mmd2_is_the_biased_v_statistic():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(30, 3, generator=g, dtype=torch.float64)
    x = torch.randn(25, 3, generator=g, dtype=torch.float64) + 0.3
    m = Matcher(r)
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * m.bandwidth ** 2)).mean()  # noqa: E731
    assert m.stats(x)["mmd2"] == pytest.approx(float(k(r, r) + k(x, x) - 2 * k(r, x)), rel=1e-9)
    assert m.stats(r)["mmd2"] == pytest.approx(0.0, abs=1e-12)


def test_equal_distributions_sit_at_the_floor(setup):
    m, floor, other, _ = setup
    s = m.stats(other)
    for key in ("mmd2", "sliced_w2"):
        assert floor[key] > 0
        assert floor[key] / 3 <= s[key] <= 3 * floor[key], (key, s[key], floor[key])
    assert abs(s["c2st_acc"] - 0.5) <= 0.08 and abs(floor["c2st_acc"] - 0.5) <= 0.08
    assert s["n_ref"] == s["n"] == floor["n"] == N


def test_shift_is_far_above_the_floor(setup):
    m, floor, other, _ = setup
    s = m.stats(other + 0.5)
    assert s["mmd2"] > 10 * floor["mmd2"]  # measured about 50x
    assert s["sliced_w2"] > 3 * floor["sliced_w2"]
    assert s["c2st_acc"] > 0.7  # measured 0.96 (0.91-0.96 over data seeds 100-102)


def test_cluster_mixture_is_detected_by_mmd_and_c2st(setup):
    m, floor, _, g = setup
    x = _mixture(g)
    assert torch.allclose(x.var(0), torch.ones(D), atol=1e-4)
    s = m.stats(x.view(N, 1, 8, 8))
    by_mmd, by_c2st = s["mmd2"] > 3 * floor["mmd2"], s["c2st_acc"] > 0.7
    assert by_mmd or by_c2st
    # Both detect it with a margin (5.4x floor, 0.97; 5.3x-6.3x, 0.96-0.98 over data seeds 100-102);
    # sliced W2 reads only 2.7x floor here.
    assert by_mmd and by_c2st, s


def test_same_seed_same_numbers(setup):
    m, _, other, g = setup
    x = _normal(g, 300).view(300, 1, 8, 8)  # fewer latents than reference rows: C2ST subsamples the reference
    again = Matcher(m.ref.view(N, 1, 8, 8), seed=0)
    assert m.stats(x) == again.stats(x)
    assert m.stats(other) == again.stats(other)


def test_floor_and_stats_check_sizes(setup):
    m, _, other, _ = setup
    with pytest.raises(ValueError):
        m.floor(other[:-1])
    with pytest.raises(ValueError):
        m.stats(other.view(N, 4, 4, 4))


def _d(mmd2: float) -> dict:
    return {"mmd2": mmd2}


def test_reached_started_at_prior():
    floor = _d(1.0)  # threshold 3.0 whatever "before" is, as long as before <= 3.0
    out = reached(_d(2.0), _d(3.0), floor)
    assert out == {"reached": True, "rule": RULE, "started_at_prior": True, "threshold": 3.0}
    assert not reached(_d(2.0), _d(3.0001), floor)["reached"]
    # The boundary: before == 3 x floor still counts as started at the prior.
    assert reached(_d(3.0), _d(3.0), floor)["started_at_prior"]
    assert not reached(_d(3.0), _d(3.5), floor)["reached"]


def test_reached_started_away_from_prior():
    floor = _d(1.0)
    # Shrinking to 0.3 x before is enough when that is above 3 x floor ...
    out = reached(_d(20.0), _d(6.0), floor)
    assert out["reached"] and not out["started_at_prior"] and out["threshold"] == pytest.approx(6.0)
    assert not reached(_d(20.0), _d(6.01), floor)["reached"]
    # ... otherwise 3 x floor is the bar.
    out = reached(_d(5.0), _d(3.0), floor)
    assert out["reached"] and not out["started_at_prior"] and out["threshold"] == 3.0
    assert not reached(_d(5.0), _d(3.5), floor)["reached"]
    # Just above the prior branch's boundary.
    assert not reached(_d(3.0001), _d(3.0), floor)["started_at_prior"]
    # Other factor / shrink reach the threshold and the stated rule.
    out = reached(_d(20.0), _d(6.0), floor, factor=2.0, shrink=0.5)
    assert out["threshold"] == 10.0 and out["reached"] and "2 x floor" in out["rule"] and out["rule"] != RULE
