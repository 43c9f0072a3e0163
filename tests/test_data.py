"""The image-data layer: shapes, ranges, determinism, splits, and the error paths."""
import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import (DATASETS, FMNIST_CLASSES, FMNIST_DEBIAN_DIR, DataSpec, dataset_fingerprint,
                        load_dataset)
from bench.errors import UserError

needs_fmnist = pytest.mark.skipif(
    not FMNIST_DEBIAN_DIR.is_dir(),
    reason=f"{FMNIST_DEBIAN_DIR} absent: apt-get install -y dataset-fashion-mnist (as root)")


def _check(split, n, channels, res, num_classes):
    assert split.images.shape == (n, channels, res, res) and split.images.dtype == torch.float32
    assert split.labels.shape == (n,) and split.labels.dtype == torch.long
    assert split.images.min() >= -1 and split.images.max() <= 1
    assert 0 <= split.labels.min() and split.labels.max() < num_classes


def _rows(images):
    return {bytes(x.numpy().tobytes()) for x in images}


# ---------------------------------------------------------------- synthetic

def test_synthetic_shapes_ranges_and_stratified_val():
    s = load_dataset(DataSpec("synthetic", 16))
    assert (s.num_classes, s.channels, len(s.train.class_names)) == (10, 3, 10)
    _check(s.train, 450, 3, 16, 10)
    _check(s.val, 50, 3, 16, 10)
    _check(s.test, 200, 3, 16, 10)
    assert Counter(s.val.labels.tolist()) == {c: 5 for c in range(10)}      # 10% of 50 per class
    assert s.source.startswith("synthetic")


def test_synthetic_deterministic_and_seeded():
    a, b = load_dataset(DataSpec("synthetic", 16, seed=3)), load_dataset(DataSpec("synthetic", 16, seed=3))
    for x, y in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]:
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert dataset_fingerprint(a) != dataset_fingerprint(load_dataset(DataSpec("synthetic", 16, seed=4)))


def test_splits_are_disjoint():
    s = load_dataset(DataSpec("synthetic", 16))
    train, val, test = _rows(s.train.images), _rows(s.val.images), _rows(s.test.images)
    assert len(train) == len(s.train) and not (train & val) and not (train & test) and not (val & test)


def test_limit_is_class_balanced_and_channels_convert():
    s = load_dataset(DataSpec("synthetic", 16, limit=20, channels=1))
    for split in (s.train, s.val, s.test):
        _check(split, 20, 1, 16, 10)
        assert Counter(split.labels.tolist()) == {c: 2 for c in range(10)}
    assert s.channels == 1


def test_bad_spec_and_unknown_name():
    with pytest.raises(UserError, match="val_fraction"):
        DataSpec("synthetic", 16, val_fraction=1.0)
    with pytest.raises(UserError) as e:
        load_dataset(DataSpec("fashion-mnst", 32))
    msg = str(e.value)
    assert "Did you mean 'fashion-mnist'" in msg and all(name in msg for name in DATASETS)


# ---------------------------------------------------------------- fashion-mnist

@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(DataSpec("fashion-mnist", 32, limit=50))


@needs_fmnist
def test_fashion_mnist_from_debian_files(fmnist):
    assert fmnist.train.class_names == FMNIST_CLASSES and fmnist.channels == 1
    for split in (fmnist.train, fmnist.val, fmnist.test):
        _check(split, 50, 1, 32, 10)
        assert Counter(split.labels.tolist()) == {c: 5 for c in range(10)}
    assert str(FMNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz") in fmnist.source
    assert str(FMNIST_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz") in fmnist.source


@needs_fmnist
def test_fashion_mnist_pads_28_to_32_with_background(fmnist):
    x = fmnist.train.images
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, :, border] == -1).all()
    assert (x[:, :, 2:30, 2:30] > -1).any(dim=(1, 2, 3)).all()       # every image has content


@needs_fmnist
def test_fashion_mnist_resizes_other_resolutions():
    s = load_dataset(DataSpec("fashion-mnist", 16, limit=10, channels=3))
    _check(s.train, 10, 3, 16, 10)
    assert "resized 28->16" in s.source


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(DataSpec("fashion-mnist", 32, root=str(tmp_path)))
    assert "apt-get install" in str(e.value) and str(tmp_path) in str(e.value)
    assert "\n" not in str(e.value)


def _write_idx(path: Path, array: np.ndarray):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_root_with_plain_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in [("train", 40), ("t10k", 20)]:
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    s = load_dataset(DataSpec("fashion-mnist", 32, root=str(tmp_path), val_fraction=0.25))
    _check(s.train, 30, 1, 32, 10)
    _check(s.val, 10, 1, 32, 10)                                          # 1 of each class's 4
    _check(s.test, 20, 1, 32, 10)
    assert str(tmp_path / "train-images-idx3-ubyte") in s.source


# ---------------------------------------------------------------- imagefolder

def _write_tree(root: Path, splits):
    from PIL import Image
    for split in splits:
        for c, color in [("cat", (0, 200, 0)), ("dog", (0, 0, 200))]:
            (root / split / c).mkdir(parents=True)
            for i, (w, h) in enumerate([(120, 40), (20, 50), (33, 33)]):
                img = Image.new("RGB", (w, h), (255, 0, 0))               # red margins ...
                side = min(w, h)                                          # ... around a centred square
                img.paste(Image.new("RGB", (side, side), color), ((w - side) // 2, (h - side) // 2))
                img.save(root / split / c / f"{i}.png")


def test_imagefolder_center_crops_to_squares(tmp_path):
    _write_tree(tmp_path, ["train", "val"])
    s = load_dataset(DataSpec("imagefolder", 16, root=str(tmp_path), val_fraction=0.34))
    assert s.train.class_names == ["cat", "dog"] and s.channels == 3
    _check(s.train, 4, 3, 16, 2)
    _check(s.val, 2, 3, 16, 2)
    _check(s.test, 6, 3, 16, 2)
    for split in (s.train, s.val, s.test):                     # the crop keeps only the centre square
        red = (split.images[:, 0] > 0.5).float().mean()
        assert red < 0.05
    assert str(tmp_path / "val") in s.source


def test_imagefolder_without_val_dir_splits_train(tmp_path):
    _write_tree(tmp_path, ["train"])
    s = load_dataset(DataSpec("imagefolder", 16, root=str(tmp_path), val_fraction=0.34))
    for split in (s.train, s.val, s.test):                     # 3 per class: 1 val, 1 test, 1 train
        assert split.labels.tolist() == [0, 1]
    assert "no val/ dir" in s.source


def test_imagefolder_needs_root():
    with pytest.raises(UserError, match="--data-root"):
        load_dataset(DataSpec("imagefolder", 16))
