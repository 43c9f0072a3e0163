"""The memmap image store (bench/image_store.py): an imagefolder decoded once into a uint8 file gives the
very images of the memory store (hence the same training), is reused without decoding again, and a
damaged or half-written file is never used."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data as D
from bench import image_store as S
from bench.compute import Compute
from bench.data import DataSpec, dataset_fingerprint, load_dataset
from bench.errors import UserError


def _tree(root: Path, per_class: int = 7, classes=("bird", "cat", "dog"), val: int = 2) -> Path:
    """Noise images of varied sizes (every crop path: box-halving, upscaling, non-square) in ImageNet layout."""
    from PIL import Image
    rng = np.random.default_rng(0)
    sizes = [(40, 24), (17, 30), (64, 64), (9, 12), (33, 50)]
    for split, n in (("train", per_class), ("val", val)) if val else (("train", per_class),):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + len(c)) % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i:02d}.png")
    return root


def _spec(root: Path, cache: Path, store: str, **kw) -> DataSpec:
    return DataSpec("imagefolder", 16, root=str(root), cache_dir=str(cache), store=store, workers=0, **kw)


@pytest.fixture
def counted(monkeypatch):
    """Counts the files decoded (read_image calls in this process: workers=0)."""
    calls, real = [], D.read_image
    monkeypatch.setattr(D, "read_image", lambda path, resolution: calls.append(path) or real(path, resolution))
    return calls


def _same(a, b):
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert x.images.shape == y.images.shape and torch.equal(x.images[:], y.images[:])
        assert torch.equal(x.labels, y.labels) and x.files == y.files and x.class_names == y.class_names


@pytest.mark.parametrize("channels, val, limit", [(None, 2, None), (1, 0, 4)])
def test_memmap_store_gives_the_images_of_the_memory_store(tmp_path, channels, val, limit):
    root = _tree(tmp_path / "data", val=val)
    mem = load_dataset(_spec(root, tmp_path / "cache", "memory", channels=channels, limit=limit))
    mm = load_dataset(_spec(root, tmp_path / "cache", "memmap", channels=channels, limit=limit))
    assert isinstance(mm.train.images, S.ImageArray) and isinstance(mem.train.images, torch.Tensor)
    _same(mem, mm)
    assert mm.channels == mem.channels and mm.source.startswith(mem.source)
    assert "memmap store" in mm.source and str(tmp_path / "cache" / "image_store") in mm.source
    assert dataset_fingerprint(mm) == dataset_fingerprint(mem)  # the same stage keys downstream
    assert list((tmp_path / "cache" / "image_store" / "fingerprints").glob("*.json"))  # remembered
    assert dataset_fingerprint(mm) == dataset_fingerprint(mem)  # and read back the same
    x, t = mm.train.images, mem.train.images  # the tensor interface the training loops use
    idx = torch.tensor([3, 0, 3, 1])
    assert len(x) == len(t) and x.shape == t.shape and x.dtype == t.dtype and x.device == t.device
    assert torch.equal(x[idx], t[idx]) and torch.equal(x[2:5], t[2:5]) and torch.equal(x[1], t[1])
    assert all(torch.equal(a, b) for a, b in zip(x.split(3), t.split(3), strict=True))
    assert torch.equal(S.subset(x, idx)[:], S.subset(t, idx))
    assert torch.allclose(S.mean_image(x), S.mean_image(t), atol=1e-6)  # summed in float64: not bit for bit
    cx = Compute(None, "dmvae", "cpu")
    assert torch.equal(cx.fetch(x, idx), cx.fetch(t, idx))


def test_decode_is_reused_and_a_damaged_file_is_decoded_again(tmp_path, counted):
    root = _tree(tmp_path / "data")
    mem = load_dataset(_spec(root, tmp_path / "cache", "memory"))
    counted.clear()
    first = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    n = len(counted)
    assert n == 27  # 21 train + 6 val files, each decoded once
    again = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    assert len(counted) == n  # mapped, not decoded
    _same(mem, first)
    _same(mem, again)
    (store,) = {s.images.store_dir for s in (first.train, first.val)}
    data = store / "images.npy"
    with open(data, "r+b") as f:  # a truncated file (a full disk, a partial copy) is never used
        f.truncate(data.stat().st_size - 100)
    with pytest.warns(UserWarning, match="damaged"):
        fixed = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    assert len(counted) == n + 21
    _same(mem, fixed)
    (root / "train" / "cat" / "00.png").touch()  # a changed file (mtime): a new store
    load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    assert len(counted) == n + 21 + 21


def test_an_interrupted_decode_resumes_and_its_partial_file_is_never_used(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data", val=0)
    mem = load_dataset(_spec(root, tmp_path / "cache", "memory"))
    monkeypatch.setattr(S, "DECODE_BATCH", 2)
    monkeypatch.setattr(S, "PROGRESS_EVERY", 4)
    counted, real = [], D.read_image

    def killed(path, resolution):  # the process dies at the 12th file (progress saved at 4 and 8 rows)
        if len(counted) == 11:
            raise KeyboardInterrupt
        counted.append(path)
        return real(path, resolution)
    monkeypatch.setattr(D, "read_image", killed)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    (folder,) = (tmp_path / "cache" / "image_store").iterdir()
    assert (folder / "images.npy.partial").is_file() and not (folder / "images.npy").exists()
    counted.clear()
    monkeypatch.setattr(D, "read_image", lambda p, r: counted.append(p) or real(p, r))
    mm = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    assert len(counted) == 21 - 8  # resumed after the last saved progress
    _same(mem, mm)
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "lock", "meta.json"]


def test_unreadable_files_are_skipped_and_counted_as_with_the_memory_store(tmp_path, counted, capsys):
    root = _tree(tmp_path / "data", per_class=40, classes=("cat", "dog"), val=0)
    (root / "train" / "dog" / "03.png").write_text("not an image")
    mem = load_dataset(_spec(root, tmp_path / "cache", "memory"))
    mm = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    again = load_dataset(_spec(root, tmp_path / "cache", "memmap"))  # from the store: the same record
    for s in (mm, again):
        _same(mem, s)
        assert s.skipped == mem.skipped and len(s.skipped) == 1 and "03.png" in s.skipped[0]
        assert "skipped 1 unreadable image file(s) of 80 read" in s.source
    assert capsys.readouterr().err.count("skipped 1 unreadable") == 3
    for f in ("04", "05"):
        (root / "train" / "cat" / f"{f}.png").write_text("not an image")  # 3 of 80: more than 1%
    with pytest.raises(UserError, match="more than 1% of them are unreadable"):
        load_dataset(_spec(root, tmp_path / "cache", "memmap"))


def test_worker_processes_decode_the_same_bytes(tmp_path):
    root = _tree(tmp_path / "data", per_class=12, val=0)
    a = load_dataset(_spec(root, tmp_path / "c0", "memmap"))
    b = load_dataset(replace(_spec(root, tmp_path / "c2", "memmap"), workers=2))
    _same(a, b)
    assert '"workers": 2' in (b.train.images.store_dir / "meta.json").read_text()


def test_training_from_either_store_gives_the_same_weights(tmp_path):
    from bench.dmvae.autoencoder import TOKENIZER_PRESETS
    from bench.dmvae.latent_norm import LatentNorm
    from bench.dmvae.latent_source import cache_latents
    from bench.dmvae.start import PRETRAIN_PRESETS, pretrain_autoencoder

    root = _tree(tmp_path / "data", per_class=12)
    mem = load_dataset(_spec(root, tmp_path / "cache", "memory"))
    mm = load_dataset(_spec(root, tmp_path / "cache", "memmap"))
    cfg = replace(PRETRAIN_PRESETS["smoke"], steps=6, distill_images=10)

    def reference(images):  # a stand-in stage-1 encoder: batch by batch, as the priors' encoders
        return torch.cat([torch.nn.functional.avg_pool2d(x, 4)[:, :1].repeat(1, 4, 1, 1) for x in images.split(4)])
    nets = [pretrain_autoencoder(s.train.images, (4, 4, 4), cfg, TOKENIZER_PRESETS["smoke"], reference=reference)
            for s in (mem, mm)]
    for a, b in zip(*(list(n.encoder.state_dict().values()) + list(n.decoder.state_dict().values()) for n in nets)):
        assert torch.equal(a, b)
    assert nets[0].record["final"] == nets[1].record["final"]
    norm = LatentNorm(mean=0.1, scale=2.0, measured_on="test")
    lat = [cache_latents(nets[0].encoder, s.train.images, norm, flip=True, batch=5) for s in (mem, mm)]
    assert torch.equal(lat[0].table, lat[1].table)


def test_memmap_store_refuses_datasets_without_files(tmp_path):
    from bench.cli import main
    with pytest.raises(UserError, match="no image files to decode once"):
        DataSpec("synthetic", 32, store="memmap")
    assert main(["--preset", "smoke", "--set", "image_store=memmap", "--dry-run"]) == 2


@pytest.mark.slow  # two smoke studies of one prior (about a minute on 2 cores)
def test_a_study_from_the_memmap_store_equals_one_from_memory(tmp_path, inception_torchscript):
    import json

    from bench.cli import main
    root = _tree(tmp_path / "data", per_class=12, val=8)  # the DM stage's probe needs 20 held-out images
    fast = ["--preset", "smoke", "--dataset", "imagefolder", "--data-root", str(root), "--resolution", "16",
            "--priors", "gaussian", "--cache-dir", str(tmp_path / "cache"), "--set", "eval.ref_n=10",
            "--set", "eval.gfid_n=10", "--set", "eval.convergence_n=10", "--set", "eval.tsne_per_class=3",
            "--set", "eval.sample_steps=4"]
    runs = {}
    for store in ("memory", "memmap"):
        assert main([*fast, "--out", str(tmp_path / store), "--set", f"image_store={store}"]) == 0
        runs[store] = json.loads((tmp_path / store / "results.json").read_text())
    mem, mm = runs["memory"], runs["memmap"]
    assert mem["meta"]["stage_keys"] == mm["meta"]["stage_keys"]  # same data fingerprint, same stages
    assert "image_store" in mem["meta"]["config_neutral"] and mm["meta"]["config"]["image_store"] == "memmap"
    a, b = mem["priors"]["gaussian"]["per_training_seed"]["0"], mm["priors"]["gaussian"]["per_training_seed"]["0"]
    for key in ("rfid", "psnr", "ssim", "gfid", "matching", "dm_curve"):
        assert a[key] == b[key], key
