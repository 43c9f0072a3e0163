"""Image datasets: images (N, C, R, R) float32 in [-1, 1], labels (N,) long.

A loader returns the official train and test pools (labels, and a function from indices to images
at the requested resolution); `load_dataset` then holds out a stratified, seeded val split from
train, caps each split at `limit` (class-balanced) and decodes only what it keeps. The datasets are
the keys of `DATASETS`: fashion-mnist (the embedded default, Debian's dataset-fashion-mnist),
cifar10, imagefolder (ImageNet layout, ADM center crop) and synthetic (procedural, no files).
An imagefolder file that cannot be decoded (truncated, not an image) is skipped, named on stderr and
recorded in Splits.source / Splits.skipped; too many of them stop the load (_check_unreadable).
Imagefolder sets also carry each image's file name ("<class>/<file>", ImageSet.files), by which a
captions file may key its captions (bench/features/text.py).

Where the images live (`DataSpec.store`): "memory" (the default) decodes every split into float32
tensors; "memmap" (imagefolder only) decodes the kept files once into a uint8 file under the cache
root and gives each split as an ImageArray that converts rows at read time (bench/image_store.py),
bit-identical to the tensors of the memory store.
"""
from __future__ import annotations

import gzip
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError, unknown
from bench.image_store import (STORES, ImageArray, image_bytes, memoised_fingerprint, open_store, to_channels,
                               uint8_to_unit)

FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FMNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class DataSpec:
    name: str
    resolution: int
    root: str | None = None          # --data-root; overrides every default location
    channels: int | None = None      # None: the dataset's own (1 or 3); else convert 1 <-> 3
    limit: int | None = None         # cap on images per split, class-balanced (fast presets)
    seed: int = 0                    # drives the val split, the limit subset and synthetic data
    val_fraction: float = 0.1        # share of the official train split held out as val
    cache_dir: str | None = None     # the cache root (--cache-dir; None: $DMVAE_CACHE or the default):
                                     # downloads go to <cache root>/data, memmap stores to <cache root>/image_store
    store: str = "memory"            # memory | memmap (file-backed datasets; bench/image_store.py)
    workers: int | None = None       # memmap: decode processes (0: this process; None: one per core, at most 16)

    def __post_init__(self):
        for ok, what in [(self.resolution >= 8, "resolution must be at least 8"),
                         (0 < self.val_fraction < 1, "val_fraction must lie strictly between 0 and 1"),
                         (self.limit is None or self.limit >= 1, "limit must be a positive image count"),
                         (self.channels in (None, 1, 3), "channels must be 1, 3 or unset"),
                         (self.store in STORES, f"store must be one of {', '.join(STORES)}"),
                         (self.workers is None or self.workers >= 0, "workers must be 0 or more, or unset")]:
            if not ok:
                raise UserError(f"Bad data settings: {what} (got {self}).")
        if self.store == "memmap" and self.name not in FILE_BACKED:
            raise UserError(f"The memmap image store is for file-backed datasets ({', '.join(FILE_BACKED)}): "
                            f"{memmap_refusal(self.name)}.")


@dataclass(frozen=True, eq=False)
class ImageSet:
    images: torch.Tensor | ImageArray  # (N, C, R, R) float32 in [-1, 1]; an ImageArray with the memmap store
    labels: torch.Tensor   # (N,) long
    class_names: list[str]
    files: tuple[str, ...] = ()  # file-backed sets (imagefolder): image i's path below its split's
                                 # folder, "<class>/<file>"; empty for the others (not in the fingerprint)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    channels: int
    source: str            # which files/dirs were read, and how they were resized (and what was skipped)
    skipped: tuple[str, ...] = ()  # files left out because they could not be decoded: "path (reason)"


@dataclass(frozen=True)
class _Pool:
    """An official split before decoding: labels, and indices -> (n, C, R, R) in [-1, 1].

    A file-backed pool (imagefolder) leaves out the files it cannot decode: fetch returns the images of
    the others, and `unreadable` maps each left-out index to "path (reason)".
    """
    labels: np.ndarray
    fetch: Callable[[np.ndarray], torch.Tensor]
    unreadable: dict[int, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # file-backed pools: each index's path relative to the split's folder
    paths: tuple[Path, ...] = ()  # file-backed pools: each index's file (what the memmap store decodes)


@dataclass(frozen=True)
class _Raw:
    train: _Pool
    test: _Pool | None     # None: carve test out of train too (an imagefolder without val/)
    class_names: list[str]
    source: str


# ---------------------------------------------------------------- entry points

def load_dataset(spec: DataSpec) -> Splits:
    """Load `spec.name` as train/val/test tensors; deterministic in `spec` (see module doc)."""
    if spec.name not in DATASETS:
        raise unknown("dataset", spec.name, DATASETS)
    raw = DATASETS[spec.name](spec)
    rng = np.random.default_rng(spec.seed)
    train_idx, val_idx = _stratified_split(raw.train.labels, np.arange(len(raw.train.labels)),
                                           spec.val_fraction, rng)
    test_pool = raw.test
    if test_pool is None:
        test_pool = raw.train
        train_idx, test_idx = _stratified_split(raw.train.labels, train_idx, spec.val_fraction, rng)
    else:
        test_idx = np.arange(len(test_pool.labels))

    picks = [(pool, _balanced_subset(pool.labels, idx, spec.limit, rng))  # the images each split keeps
             for pool, idx in ((raw.train, train_idx), (raw.train, val_idx), (test_pool, test_idx))]
    stores = _open_stores(spec, picks) if spec.store == "memmap" else {}
    read, bad = [], []  # labels of the files decoded, and of those that could not be

    def take(pool: _Pool, idx: np.ndarray) -> ImageSet:
        images = None if stores else to_channels(pool.fetch(idx), spec.channels)
        unreadable = np.isin(idx, list(pool.unreadable))
        read.append(pool.labels[idx])
        bad.append(pool.labels[idx[unreadable]])
        idx = idx[~unreadable]
        files = tuple(pool.names[i] for i in idx) if pool.names else ()
        images = stores[id(pool)](idx) if stores else images.float().contiguous()
        return ImageSet(images, torch.from_numpy(pool.labels[idx]).long(), list(raw.class_names), files)

    train, val, test = (take(pool, idx) for pool, idx in picks)
    skipped = tuple(sorted({*raw.train.unreadable.values(), *(raw.test.unreadable.values() if raw.test else ())}))
    source = raw.source + "".join(f", images: memmap store {f}" for f in dict.fromkeys(
        s.images.store_dir for s in (train, val, test) if isinstance(s.images, ImageArray)))
    if skipped:
        source += _check_unreadable(skipped, np.concatenate(read), np.concatenate(bad), raw.class_names)
    return Splits(train, val, test, len(raw.class_names), train.images.shape[1], source, skipped)


def _open_stores(spec: DataSpec, picks) -> dict:
    """Per file-backed pool (by id): indices -> ImageArray of its memmap store (bench/image_store.py),
    which holds the files the splits keep from that pool, decoded once. The files that cannot be decoded
    enter pool.unreadable, as the memory store's fetch would record them."""
    opened = {}
    for pool in {id(p): p for p, _ in picks}.values():
        kept = np.unique(np.concatenate([idx for p, idx in picks if p is pool]))
        array, bad, key, folder = open_store(cache_root(spec), [pool.paths[i] for i in kept], spec.resolution,
                                             read_image, spec.workers)
        for row, reason in bad.items():
            pool.unreadable[int(kept[row])] = f"{pool.paths[kept[row]]} ({reason})"
        opened[id(pool)] = (lambda idx, array=array, kept=kept, key=key, folder=folder:
                            ImageArray(array, np.searchsorted(kept, idx), spec.channels, key, folder))
    return opened


MAX_UNREADABLE_SHARE = 0.01  # of the image files read; see _check_unreadable


def _check_unreadable(skipped, read: np.ndarray, bad: np.ndarray, class_names) -> str:
    """Skipping a few undecodable files is fine; many point at a broken copy. Too many, and an error, when
    more than 1% of the files read (at least one file is always tolerated) could not be decoded, or every
    file read of some class. Otherwise the files are named on stderr; returns the note for the source."""
    n_read, n_bad = (np.bincount(x, minlength=len(class_names)) for x in (read, bad))  # per class
    empty = [class_names[c] for c in np.flatnonzero((n_read > 0) & (n_bad == n_read))]
    listed = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    if len(bad) > max(1, MAX_UNREADABLE_SHARE * len(read)) or empty:
        why = (f"every file read of class {', '.join(empty[:5])} is" if empty else
               f"more than {MAX_UNREADABLE_SHARE:.0%} of them are")
        raise UserError(f"{len(bad)} of the {len(read)} image files read could not be decoded, and {why} "
                        f"unreadable, too many to skip: {listed}. Replace or remove the damaged files (a "
                        f"partial copy or download is the usual cause), then run again.")
    note = f"skipped {len(skipped)} unreadable image file(s) of {len(read)} read: {listed}"
    print(f"warning: {note}" + (" (all of them: Splits.skipped, results.json meta.data.skipped_files)"
                                if len(skipped) > 10 else ""), file=sys.stderr)
    return f", {note}"


def dataset_fingerprint(splits: Splits) -> str:
    """sha256 of every split's image bytes (float32), labels and class names (for content-addressed caches).
    The same for both stores; the memmap store's is remembered next to it (streaming ImageNet takes minutes)."""
    sets = (splits.train, splits.val, splits.test)

    def compute() -> str:
        h = hashlib.sha256()
        for s in sets:
            h.update(repr((tuple(s.images.shape), s.class_names)).encode())
            for chunk in image_bytes(s.images):
                h.update(chunk)
            h.update(memoryview(s.labels.contiguous().numpy()).cast("B"))
        return h.hexdigest()
    if not all(isinstance(s.images, ImageArray) for s in sets):
        return compute()
    labels = [hashlib.sha256(s.labels.contiguous().numpy().tobytes()).hexdigest() for s in sets]
    return memoised_fingerprint([s.images for s in sets], [labels, sets[0].class_names], compute)


# ---------------------------------------------------------------- splits

def _stratified_split(labels, idx, fraction, rng):
    """Split idx into (kept, held_out), holding out round(fraction * n_c) of each class."""
    held = []
    for c in np.unique(labels[idx]):
        members = rng.permutation(idx[labels[idx] == c])
        held.append(members[:min(round(fraction * len(members)), len(members) - 1)])
    held = np.sort(np.concatenate(held)) if held else idx[:0]
    return np.setdiff1d(idx, held), held


def _balanced_subset(labels, idx, limit, rng):
    """At most `limit` of idx, taken round-robin over classes in a seeded random order."""
    if limit is None or limit >= len(idx):
        return idx
    shuffled = rng.permutation(idx)
    lab = labels[shuffled]
    order = np.argsort(lab, kind="stable")            # groups classes, keeps shuffled order
    rank = np.empty(len(lab), dtype=np.int64)          # position of each item within its class
    starts = np.searchsorted(lab[order], lab[order])
    rank[order] = np.arange(len(lab)) - starts
    keep = np.lexsort((np.arange(len(lab)), rank))[:limit]
    return np.sort(shuffled[keep])


# ---------------------------------------------------------------- pixels

def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Square (n, C, H, H) -> (n, C, R, R), bilinear with antialiasing."""
    if x.shape[-1] == resolution:
        return x
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
    return x.clamp_(-1.0, 1.0)


def center_crop_arr(image, resolution: int) -> np.ndarray:
    """ADM/DiT center crop: box-halve while >= 2R, bicubic shorter side to R, crop the centre."""
    from PIL import Image
    while min(*image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


def read_image(path: Path, resolution: int) -> np.ndarray | str:
    """One image file, ADM-center-cropped to (R, R, 3) uint8; or, when it cannot be decoded (truncated, not
    an image, ...), the reason in one line. Both stores decode with it (the memmap store in worker processes)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return center_crop_arr(image.convert("RGB"), resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return _one_line(e)


def cache_root(spec: DataSpec) -> Path:
    """The cache root of bench/cache.py (--cache-dir, else $DMVAE_CACHE or the default)."""
    from bench.cache import default_root
    return Path(spec.cache_dir or default_root())


def download_dir(spec: DataSpec) -> Path:
    """Where downloaded datasets live: <cache root>/data."""
    return cache_root(spec) / "data"


def _one_line(e: Exception) -> str:
    """A download error as one line (torchvision's span several), for one-paragraph UserErrors."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


# ---------------------------------------------------------------- fashion-mnist

def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (uint8 payload), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise UserError(f"{path} is not a uint8 idx file (bad header); re-download it.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx_files(directory: Path) -> list[Path] | None:
    """The four idx files in directory (or its torchvision layout FashionMNIST/raw), gz or not."""
    for d in (directory, directory / "FashionMNIST" / "raw"):
        found = [next((p for p in (d / f"{f}.gz", d / f) if p.is_file()), None) for f in FMNIST_FILES]
        if all(found):
            return found
    return None


def _fashion_mnist(spec: DataSpec) -> _Raw:
    wanted = ", ".join(f + "[.gz]" for f in FMNIST_FILES)
    if spec.root is not None:                         # an explicit root never falls back
        files = _find_idx_files(Path(spec.root))
        if files is None:
            raise UserError(
                f"Fashion-MNIST not found under --data-root {spec.root} (looked for {wanted} there and "
                f"in its FashionMNIST/raw). Put those four idx files there, or drop --data-root to use "
                f"the Debian package in {FMNIST_DEBIAN_DIR} after `{FMNIST_INSTALL}` (as root).")
    else:
        cache_dir = download_dir(spec)
        files = _find_idx_files(FMNIST_DEBIAN_DIR) or _find_idx_files(cache_dir)
        if files is None:
            try:
                from torchvision.datasets import FashionMNIST
                for train in (True, False):
                    FashionMNIST(str(cache_dir), train=train, download=True)
            except Exception as e:                    # offline: urllib/socket errors of any kind
                raise UserError(
                    f"Fashion-MNIST not found in {FMNIST_DEBIAN_DIR} or {cache_dir}, and downloading it "
                    f"failed ({_one_line(e)}). Install it with `{FMNIST_INSTALL}` (as root), or pass "
                    f"--data-root DIR with {wanted}, or run once with internet access to download it "
                    f"into {cache_dir}.") from e
            files = _find_idx_files(cache_dir)
    train_x, train_y, test_x, test_y = (_read_idx(p) for p in files)

    def pool(x: np.ndarray, y: np.ndarray) -> _Pool:
        def fetch(idx):
            img = uint8_to_unit(torch.from_numpy(x[idx]).unsqueeze(1))     # (n, 1, 28, 28)
            if spec.resolution == 32:                 # pad with background (-1), no resampling
                return F.pad(img, (2, 2, 2, 2), value=-1.0)
            return _resize(img, spec.resolution)
        return _Pool(y.astype(np.int64), fetch)

    how = "padded 28->32 with -1" if spec.resolution == 32 else f"resized 28->{spec.resolution} bilinear"
    return _Raw(pool(train_x, train_y), pool(test_x, test_y), FMNIST_CLASSES,
                f"fashion-mnist: {', '.join(map(str, files))} ({how})")


# ---------------------------------------------------------------- cifar10

def _cifar10(spec: DataSpec) -> _Raw:
    from torchvision.datasets import CIFAR10
    root = Path(spec.root) if spec.root is not None else download_dir(spec)
    try:
        sets = [CIFAR10(str(root), train=t, download=False) for t in (True, False)]
    except RuntimeError:                              # "Dataset not found or corrupted"
        try:
            sets = [CIFAR10(str(root), train=t, download=True) for t in (True, False)]
        except Exception as e:
            raise UserError(
                f"CIFAR-10 not found in {root / 'cifar-10-batches-py'} and downloading it failed "
                f"({_one_line(e)}). Run once with internet access to download it into {root}, "
                f"or pass --data-root DIR containing cifar-10-batches-py/ (the python version of "
                f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted).") from e

    def pool(ds) -> _Pool:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)    # (N, 3, 32, 32) uint8
        return _Pool(np.asarray(ds.targets, dtype=np.int64),
                     lambda idx: _resize(uint8_to_unit(x[torch.from_numpy(idx)]), spec.resolution))

    how = "" if spec.resolution == 32 else f" (resized 32->{spec.resolution} bilinear)"
    return _Raw(pool(sets[0]), pool(sets[1]), list(sets[0].classes),
                f"cifar10: {root / 'cifar-10-batches-py'} data_batch_1..5, test_batch{how}")


# ---------------------------------------------------------------- imagefolder

def _scan(directory: Path, classes: list[str]):
    """(paths, labels) of directory/<class>/<image>; label = position in classes, absent dirs skipped."""
    paths, labels = [], []
    for label, c in enumerate(classes):
        files = sorted(p for p in (directory / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _imagefolder(spec: DataSpec) -> _Raw:
    if spec.root is None or not Path(spec.root).is_dir():
        raise UserError(
            f"The imagefolder dataset needs --data-root DIR pointing at an ImageNet-layout tree "
            f"(DIR/train/<class>/*.JPEG and optionally DIR/val/<class>/*.JPEG); got {spec.root!r}.")
    root = Path(spec.root)
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())   # torchvision's order
    paths, labels = _scan(train_dir, classes)
    if not paths:
        raise UserError(f"No images found in {train_dir}/<class>/ "
                        f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")

    res = spec.resolution

    def pool(paths, labels, folder: Path) -> _Pool:
        unreadable: dict[int, str] = {}
        names = tuple(p.relative_to(folder).as_posix() for p in paths)

        def fetch(idx):
            arrs = []
            for i in idx:
                arr = read_image(paths[i], res)
                if isinstance(arr, str):
                    unreadable[int(i)] = f"{paths[i]} ({arr})"  # truncated, not an image, ...
                else:
                    arrs.append(arr)
            x = np.stack(arrs) if arrs else np.zeros((0, res, res, 3), np.uint8)
            return uint8_to_unit(torch.from_numpy(x).permute(0, 3, 1, 2))      # (n, 3, R, R)
        return _Pool(labels, fetch, unreadable, names, tuple(paths))

    test, source = None, f"imagefolder: {train_dir} ({len(paths)} images, {len(classes)} classes)"
    val_dir = root / "val"
    if train_dir != root and val_dir.is_dir():
        val_paths, val_labels = _scan(val_dir, classes)
        extra = sorted({d.name for d in val_dir.iterdir() if d.is_dir()} - set(classes))
        if extra or not val_paths:
            raise UserError(f"{val_dir} must hold images in the train class folders (ImageNet "
                            f"layout val/<class>/*); found extra classes {extra[:5]} and "
                            f"{len(val_paths)} images in train classes.")
        test = pool(val_paths, val_labels, val_dir)
        source += f", test: {val_dir} ({len(val_paths)} images)"
    else:
        source += ", test held out from train (no val/ dir)"
    return _Raw(pool(paths, labels, train_dir), test, classes, source + f", ADM center crop to {res}")


# ---------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = ["h-stripes", "v-stripes", "diag-stripes", "anti-diag-stripes", "checker",
                     "disk", "ring", "square", "cross", "radial-gradient"]
SYNTHETIC_PER_CLASS = {"train": 50, "test": 20}


def _shape(c: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (R, R) pattern of class c in [0, 1], on coordinates u, v in [-1, 1] with random jitter."""
    freq, phase = rng.uniform(2.0, 4.0), rng.uniform(0, 2 * np.pi)
    cu, cv, size = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.35, 0.6)
    du, dv = u - cu, v - cv
    r = np.hypot(du, dv)
    wave = lambda t: 0.5 + 0.5 * np.sign(np.sin(np.pi * freq * t + phase))
    patterns = [lambda: wave(v), lambda: wave(u), lambda: wave(u + v), lambda: wave(u - v),
                lambda: wave(u) * wave(v) + (1 - wave(u)) * (1 - wave(v)),
                lambda: (r < size).astype(float), lambda: (np.abs(r - size) < 0.12).astype(float),
                lambda: ((np.abs(du) < size) & (np.abs(dv) < size)).astype(float),
                lambda: ((np.abs(du) < 0.12) | (np.abs(dv) < 0.12)).astype(float),
                lambda: np.clip(1 - r / (2 * size), 0, 1)]
    return patterns[c]()


def _synthetic(spec: DataSpec) -> _Raw:
    res = spec.resolution
    u, v = np.meshgrid(np.linspace(-1, 1, res), np.linspace(-1, 1, res), indexing="xy")

    def pool(split_id: int, per_class: int) -> _Pool:
        rng = np.random.default_rng([spec.seed, split_id])
        labels = rng.permutation(np.repeat(np.arange(len(SYNTHETIC_CLASSES)), per_class))
        images = np.empty((len(labels), 3, res, res), dtype=np.float32)
        for i, c in enumerate(labels):
            fg, bg = rng.uniform(0.5, 1.0, 3), rng.uniform(0.0, 0.3, 3)       # random tint per image
            mask = _shape(int(c), u, v, rng)[None]
            images[i] = mask * fg[:, None, None] + (1 - mask) * bg[:, None, None]
        images += rng.normal(0, 0.05, images.shape).astype(np.float32)
        x = torch.from_numpy(np.clip(images * 2 - 1, -1, 1))
        return _Pool(labels.astype(np.int64), lambda idx: x[torch.from_numpy(idx)])

    return _Raw(pool(0, SYNTHETIC_PER_CLASS["train"]), pool(1, SYNTHETIC_PER_CLASS["test"]),
                SYNTHETIC_CLASSES, f"synthetic: seed {spec.seed}, {res}x{res}, generated (no files)")


FILE_BACKED = ("imagefolder",)  # the datasets the memmap store can hold (decoded image files)


def memmap_refusal(dataset: str) -> str:
    """Why the memmap store refuses a dataset that is not file-backed, and what to do (one paragraph)."""
    return (f"{dataset} is generated or read from array files and held in memory as float32 (CIFAR-10's 60k "
            f"images take 0.7 GB), so there are no image files to decode once; use the memory store "
            f"(image_store=memory, the default) with it, or --dataset imagefolder --data-root DIR for an "
            f"ImageNet-layout tree too large for memory")


DATASETS: dict[str, Callable[[DataSpec], _Raw]] = {
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}
