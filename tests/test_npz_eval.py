"""Standard-protocol evaluation of ADM-layout .npz batches (bench/metrics/standard.py, `run_all.py score`).

The slow tests score two small synthetic batches once (module fixture) and check the numbers
against torch-fidelity's own calculate_metrics on the same images and the same weights: our
converted FID network, plus a SYNTHETIC classifier layer (random fc) for the Inception Score,
since torch-fidelity's real classifier weights are not available offline. That checks the IS
computation and the weights path, not the value of a real Inception Score.
"""
import json

import numpy as np
import pytest
import torch

from bench import cli
from bench.cache import Cache
from bench.errors import UserError
from bench.metrics import adm_npz as A
from bench.metrics import fid as FID
from bench.metrics import inception as I
from bench.metrics import inception_score as ISC
from bench.metrics import standard as S

N, SIDE = 32, 48


def blobs(n, seed, tint):
    """Smooth random images (N, H, W, 3) uint8: upsampled 6x6 noise with a colour tint."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g) + torch.tensor(tint).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(low, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def one_paragraph(text):
    return text.strip() and "\n" not in text.strip()


# --- reading, writing, refusing -------------------------------------------------------------

def test_write_batch_round_trips_uint8_and_float_images(tmp_path):
    u8 = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = A.read_batch(A.write_batch(tmp_path / "u8.npz", u8))
    assert b.images.dtype == np.uint8 and b.images.shape == (5, 8, 8, 3) and b.stats == {}
    assert torch.equal(b.torch_images(), u8)
    floats = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)  # grey, [-1, 1]
    arr = A.read_batch(A.write_batch(tmp_path / "f.npz", floats)).images
    assert arr.shape == (2, 2, 2, 3) and arr[0, :, :, 0].ravel().tolist() == [0, 128, 255, 191]
    assert (arr[..., 0] == arr[..., 2]).all()  # grey replicated to RGB
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:  # the ADM layout exactly
        assert z.files == ["arr_0"] and z["arr_0"].dtype == np.uint8


def test_stored_statistics_are_read(tmp_path):
    mu, sigma = np.zeros(4, np.float32), np.eye(4, dtype=np.float32)
    b = A.read_batch(A.write_batch(tmp_path / "r.npz", torch.zeros(3, 3, 4, 4, dtype=torch.uint8), mu=mu, sigma=sigma))
    assert list(b.stats) == ["pool"] and b.stats["pool"][1].dtype == np.float64


def _bad_files(tmp_path):
    good = np.zeros((4, 8, 8, 3), np.uint8)
    cases = {
        "float images": dict(arr_0=good.astype(np.float32)),
        "rank 3": dict(arr_0=good[0]),
        "channels first": dict(arr_0=good.transpose(0, 3, 1, 2)),
        "no arr_0": dict(images=good),
        "pickled objects": dict(arr_0=np.array([{"a": 1}], dtype=object)),
        "mu without sigma": dict(arr_0=good, mu=np.zeros(2048)),
        "sigma not square": dict(arr_0=good, mu=np.zeros(3), sigma=np.zeros((3, 2))),
        "too few images": dict(arr_0=good[:1]),
    }
    paths = {}
    for name, arrays in cases.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(paths[name], **arrays)
    paths["not an npz"] = tmp_path / "text.npz"
    paths["not an npz"].write_text("hello")
    paths["single .npy"] = tmp_path / "one.npy"
    np.save(paths["single .npy"], good)
    paths["missing"] = tmp_path / "missing.npz"
    return paths


EXPECT = {"float images": "dtype float32, not uint8", "rank 3": "not rank 4", "channels first": "channels-first",
          "no arr_0": "no 'arr_0'", "pickled objects": "unpickling", "mu without sigma": "without its partner",
          "sigma not square": "not a mean", "too few images": "at least 2", "not an npz": "numpy cannot read it",
          "single .npy": "single .npy", "missing": "does not exist"}


def test_bad_files_are_one_paragraph(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(UserError) as e:
            A.read_batch(path)
        assert EXPECT[name] in str(e.value) and one_paragraph(str(e.value)), name


def test_bad_files_exit_2_through_the_cli(tmp_path, capsys):
    paths = _bad_files(tmp_path)
    good = A.write_batch(tmp_path / "good.npz", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    for name in ("float images", "pickled objects", "channels first", "missing"):
        for argv in (["score", str(paths[name]), str(good)], ["score", str(good), str(paths[name])]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and one_paragraph(err) and EXPECT[name] in err, (name, err)


# --- Inception Score weights ------------------------------------------------------------------

def test_inception_score_not_measured_without_classifier_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(ISC.torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path, reason = ISC.find_weights(None)
    assert path is None and ISC.RELEASE_FILE in reason and "--inception-weights" in reason
    with pytest.raises(UserError, match="does not exist"):
        ISC.find_weights(tmp_path / "nope.pth")
    # The metric is "not measured" with that reason: never a number.
    feats = {"pool": torch.randn(8, 16, dtype=torch.float64), "spatial": torch.randn(8, 5, dtype=torch.float64)}
    ref = A.Batch(tmp_path, np.zeros((8, 4, 4, 3), np.uint8), {})
    out = S.score_features(feats, ref, feats, is_reason=reason)["inception_score"]
    assert out["status"] == "not measured" and out["value"] is None and out["reason"] == reason
    # The hub location is the one torch-fidelity downloads to.
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / ISC.RELEASE_FILE).write_bytes(b"")
    assert ISC.find_weights(None)[0] == tmp_path / "hub" / "checkpoints" / ISC.RELEASE_FILE


class _NotATensor:
    pass


def test_classifier_files_that_are_not_plain_tensors_are_refused(tmp_path):
    torch.save({"fc.weight": _NotATensor()}, tmp_path / "pickle.pth")
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "small_fc.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    for name, match in (("pickle.pth", "weights_only=True"), ("junk.pth", "weights_only=True"),
                        ("small_fc.pth", r"no classifier 'fc.weight' of shape \(1008, 2048\)")):
        with pytest.raises(UserError, match=match) as e:
            ISC.load_classifier(tmp_path / name)
        assert one_paragraph(str(e.value))


def test_inception_score_closed_forms():
    # One-hot, equally spread predictions: IS = number of classes; identical predictions: IS = 1.
    eye = torch.eye(4, dtype=torch.float64) * 100
    assert ISC.inception_score(eye, torch.eye(4, dtype=torch.float64))["value"] == pytest.approx(4.0, rel=1e-9)
    same = ISC.inception_score(eye[:1].repeat(6, 1), torch.eye(4, dtype=torch.float64))
    assert same["value"] == pytest.approx(1.0, abs=1e-9) and same["splits"] == 1
    assert ISC.inception_score(eye.repeat(3, 1), torch.eye(4, dtype=torch.float64), split_size=4)["splits"] == 3


def test_frechet_distance_to_stored_stats_is_exact_for_few_samples():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 40, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu, sigma = FID.stats(ref)
    for n in (12, 40, 90):  # N < D (low-rank form), N = D, N > D (statistics form)
        x = torch.randn(n, 40, generator=g, dtype=torch.float64)
        want = FID.frechet_distance(*FID.stats(x), mu, sigma)
        assert FID.frechet_distance_to_stats(x, mu, sigma) == pytest.approx(want, rel=1e-6)
        assert FID.frechet_distance_to_stats(x, mu, sigma) == pytest.approx(FID.frechet_distance_features(x, ref),
                                                                            rel=1e-9)


# --- scoring against torch-fidelity ----------------------------------------------------------

@pytest.fixture(scope="module")
def scored(tmp_path_factory, inception_torchscript):
    """Two synthetic batches scored once through the CLI, with a synthetic-classifier weights file."""
    d = tmp_path_factory.mktemp("npz")
    cache = Cache(d / "cache")
    samples, ref = blobs(N, 1, (0.2, 0.0, -0.1)), blobs(N, 2, (0.0, 0.0, 0.0))
    np.savez(d / "samples.npz", arr_0=samples)
    np.savez(d / "ref.npz", arr_0=ref)
    state, _ = I.converted_weights(cache)
    g = torch.Generator().manual_seed(3)
    stub = {**state, "fc.weight": 0.5 * torch.randn(ISC.CLASSES, 2048, generator=g),
            "fc.bias": torch.randn(ISC.CLASSES, generator=g)}  # synthetic classifier: not a real IS
    torch.save(stub, d / "stub_classifier.pth")
    captured = {}
    real_features = S.features

    def spy(images, cache=None, batch=50):
        out = real_features(images, cache, batch)
        captured[len(captured)] = out
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "features", spy)
        rc = cli.main(["score", str(d / "samples.npz"), str(d / "ref.npz"), "--json", str(d / "out.json"),
                       "--inception-weights", str(d / "stub_classifier.pth"), "--cache-dir", str(d / "cache")])
    assert rc == 0
    return {"dir": d, "cache": cache, "result": json.loads((d / "out.json").read_text()),
            "ref_feats": captured[0], "sample_feats": captured[1], "samples": samples, "ref": ref}


class _Images(torch.utils.data.Dataset):
    def __init__(self, nhwc):
        self.x = torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


@pytest.mark.slow
def test_fid_precision_recall_and_is_match_torch_fidelity(scored):
    import torch_fidelity

    with I._weights_only_torch_load():  # torch-fidelity loads with weights_only=False
        want = torch_fidelity.calculate_metrics(
            input1=_Images(scored["samples"]), input2=_Images(scored["ref"]), cuda=False, fid=True, prc=True,
            isc=True, isc_splits=1, feature_extractor="inception-v3-compat", save_cpu_ram=True,
            feature_extractor_weights_path=str(scored["dir"] / "stub_classifier.pth"), cache=False, verbose=False)
    m = scored["result"]["metrics"]
    for ours, theirs in (("fid", "frechet_inception_distance"), ("precision", "precision"), ("recall", "recall"),
                         ("inception_score", "inception_score_mean")):
        assert m[ours]["status"] == "measured"
        assert m[ours]["value"] == pytest.approx(want[theirs], rel=1e-4), (ours, m[ours]["value"], want[theirs])
    # Every result carries its settings.
    sha = I.weights_record(scored["cache"])["converted_sha256"]
    for name in ("fid", "sfid", "precision", "recall", "inception_score"):
        assert m[name]["n_samples"] == N and m[name]["inception_sha256"] == sha
    assert m["fid"]["n_reference"] == N and "computed from the reference file's 32 images" in m["fid"]["reference_statistics"]
    assert m["precision"]["k"] == 3 and m["inception_score"]["weights"]["release_file"] is False
    assert m["inception_score"]["weights"]["trunk_max_abs_diff"] == 0.0
    assert m["sfid"]["status"] == "measured" and m["sfid"]["value"] > 0


@pytest.mark.slow
def test_stored_mu_sigma_give_the_same_fid_as_the_reference_images(scored, tmp_path):
    feats = S.reference_features(A.read_batch(scored["dir"] / "ref.npz"), scored["cache"])  # a cache hit
    assert torch.equal(feats["pool"], scored["ref_feats"]["pool"])
    mu, sigma = FID.stats(feats["pool"])
    mu_s, sigma_s = FID.stats(feats["spatial"])
    path = A.write_batch(tmp_path / "ref_stats.npz", torch.from_numpy(scored["ref"]).permute(0, 3, 1, 2),
                         mu=mu.numpy(), sigma=sigma.numpy(), mu_s=mu_s.numpy(), sigma_s=sigma_s.numpy())
    ref = A.read_batch(path)
    got = S.score_features(scored["sample_feats"], ref, feats)
    m = scored["result"]["metrics"]
    for name in ("fid", "sfid"):
        assert got[name]["reference_statistics"].startswith("stored in the reference file")
        assert got[name]["n_reference"] is None
        assert got[name]["value"] == pytest.approx(m[name]["value"], rel=1e-6)


@pytest.mark.slow
def test_spatial_features_are_the_torchscript_mixed_6_conv():
    """sFID's layer: our Mixed_6d.branch1x1 is fid-helper's TorchScript node named mixed_6.conv (TF mixed_6/conv)."""
    try:
        ts = I.load_torchscript()
    except UserError as e:
        pytest.skip(str(e))
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # 299x299 in: the resize is the identity
        h = (x.float() - 128) / 128
        for name, layer in ts.net.layers.named_children():
            if name == "mixed_6":
                break
            h = layer(h)
        want = ts.net.layers.mixed_6.conv(h)[:, :7].permute(0, 2, 3, 1).reshape(2, -1).double()
    got = S.features(x)["spatial"]
    assert got.shape == (2, 7 * 17 * 17) and (got - want).abs().max() < 1e-4


@pytest.mark.slow
def test_cli_prints_a_table_and_not_measured_with_a_reason(scored, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ISC.torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    d = scored["dir"]
    assert cli.main(["score", str(d / "samples.npz"), str(d / "ref.npz"), "--cache-dir", str(d / "cache")]) == 0
    out = capsys.readouterr().out
    assert "inception_score  not measured" in out and "no Inception weights with the classifier layer" in out
    fid_line = next(line for line in out.splitlines() if line.startswith("fid "))
    assert f"{scored['result']['metrics']['fid']['value']:.4f}" in fid_line
