"""The memory-mapped image store of file-backed datasets (imagefolder): decode once, read rows at fetch time.

In-memory float32 splits (bench/data.py, `image_store=memory`) are fine for Fashion-MNIST and
CIFAR-10, but ImageNet-256's 1.28M train images would take ~1 TB of host memory (252 GB as uint8).
With `image_store=memmap` the files a run keeps are decoded ONCE (ADM center crop, as the memory
store) by a torch DataLoader with `workers` processes into a uint8 array file (N, R, R, 3) under
the cache root, `<cache root>/image_store/<key>/images.npy`, and every later load opens it with
numpy's memmap. The key hashes each file's path, size and mtime, the resolution and the crop
(STORE_VERSION), so an edited, added or removed file makes a new store.

Safe against a kill: rows are written into `images.npy.partial`; every PROGRESS_EVERY rows the file
is flushed and `progress.json` records how many rows are on disk (and which files could not be
decoded), so a killed decode resumes from there; the finished file is renamed into place after
`meta.json`, and a store whose file does not match its meta (truncated, wrong shape) is decoded
again with a warning. Concurrent loads of one store (torchrun ranks) wait on a lock file: one
decodes, the others open the result (and share its pages through the page cache).

`ImageArray` is the split a training loop sees: `len`, `shape`, `split(batch)` and indexing (index
tensors, arrays, slices, ints), each returning float32 (n, C, R, R) in [-1, 1] converted at read time
by `to_images`, the very conversion the memory store applies to the same uint8 pixels
(`uint8_to_unit`, `to_channels`), so both stores give bit-identical images and training. A plain
tensor satisfies the same interface; `subset` and `mean_image` cover the two places that need
more than it. Compute.fetch (bench/compute.py) pins the converted rows on CUDA.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from bench.cache import content_key
from bench.io import atomic_write_json
from bench.progress import Progress

STORES = ("memory", "memmap")  # the `image_store` setting's choices (bench/study/config.py)
STORE_VERSION = "1"     # bump when what a store holds for the same files changes (decoder, crop)
CROP = "ADM center crop (box-halve, bicubic shorter side, centre crop; bench/data.py center_crop_arr)"
KIND = "image_store"    # <cache root>/image_store/<key>/
MAX_AUTO_WORKERS = 16   # workers=None: one decode process per available core, at most this many
DECODE_BATCH = 32       # files per DataLoader item
PROGRESS_EVERY = 8192   # rows between flushes of the partial file (and progress.json)
READ_CHUNK = 1024       # rows per chunk when a whole split is streamed (fingerprint, mean image)


# ------------------------------------------------------------------------ pixels: uint8 -> float
def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (n, C, H, W) -> float32 in [-1, 1]: the one conversion of stored pixels, both stores."""
    return x.float().div_(127.5).sub_(1.0)


def to_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """(n, c, H, W) -> (n, channels, H, W): 1 -> 3 repeats, 3 -> 1 is ITU-R 601 luma (as PIL "L")."""
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def to_images(rows: np.ndarray, channels: int | None) -> torch.Tensor:
    """Stored rows (n, H, W, 3) uint8 -> float32 (n, C, H, W) in [-1, 1], contiguous: the same operations,
    in the same order and memory layout, as the memory store's imagefolder path (bench/data.py)."""
    x = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(rows)).permute(0, 3, 1, 2))
    return to_channels(x, channels).float().contiguous()


# ------------------------------------------------------------------------ the split as training sees it
class ImageArray:
    """Rows `rows` of a stored uint8 array (N, R, R, 3), read as float32 (n, C, R, R) in [-1, 1] when indexed.

    Nothing is read until indexed; `take` gives a view on a subset of the rows, still unread.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, array: np.ndarray, rows: np.ndarray, channels: int | None, store_key: str = "",
                 store_dir: Path | None = None):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.channels = channels or array.shape[-1]
        self.store_key, self.store_dir = store_key, store_dir

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.channels, *self.array.shape[1:3]))

    def __getitem__(self, key) -> torch.Tensor:
        """Float images of the rows `key` selects (an index tensor or array, a list, a slice or an int)."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        return to_images(self.array[self.rows[key]], self.channels)

    def take(self, idx) -> "ImageArray":
        """The rows idx selects, as an ImageArray (nothing is read)."""
        idx = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx
        return ImageArray(self.array, self.rows[idx], self.channels, self.store_key, self.store_dir)

    def split(self, batch: int) -> Iterator[torch.Tensor]:
        """Consecutive float batches of `batch` rows (the last may be shorter), as Tensor.split."""
        for lo in range(0, len(self), batch):
            yield self[lo:lo + batch]

    def identity(self) -> dict:
        """What determines this array's images: its store, its rows and the channel conversion."""
        return {"store": self.store_key, "rows": hashlib.sha256(self.rows.tobytes()).hexdigest(),
                "channels": self.channels}


def subset(images, idx):
    """images[idx], left unread when images is an ImageArray (a distillation pool of 50k ImageNet images
    would take 39 GB as float32); a tensor is indexed as usual."""
    return images.take(idx) if isinstance(images, ImageArray) else images[idx]


def mean_image(images) -> torch.Tensor:
    """The mean image (1, C, R, R): Tensor.mean(0) for a tensor, a float64 running sum for an ImageArray (equal
    to about 1e-7, not bit for bit; only the KL-VAE prior's check uses it, as a PSNR floor)."""
    if not isinstance(images, ImageArray):
        return images.mean(0, keepdim=True)
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for x in images.split(READ_CHUNK):
        total += x.double().sum(0)
    return (total / len(images)).float().unsqueeze(0)


def image_bytes(images) -> Iterator[memoryview]:
    """The float32 bytes of a split's images in row order, chunk by chunk (the fingerprint's input)."""
    chunks = images.split(READ_CHUNK) if isinstance(images, ImageArray) else [images.contiguous()]
    for x in chunks:
        yield memoryview(x.numpy()).cast("B")


def memoised_fingerprint(arrays: list[ImageArray], extra, compute: Callable[[], str]) -> str:
    """compute(), remembered next to the store (a fingerprint streams every image once: ~1 TB of float32
    bytes for ImageNet). Keyed by the arrays' identities and `extra` (labels, class names)."""
    key = content_key("fingerprint", STORE_VERSION, [a.identity() for a in arrays], extra)
    memo = arrays[0].store_dir.parent / "fingerprints" / f"{key}.json"
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        value = compute()
        atomic_write_json(memo, {"sha256": value, "arrays": [a.identity() for a in arrays]})
        return value


# ------------------------------------------------------------------------ building and opening a store
class _Files(torch.utils.data.Dataset):
    """Files -> `read(path, resolution)`: an (R, R, 3) uint8 array, or why the file cannot be decoded."""

    def __init__(self, paths: list[Path], resolution: int, read: Callable):
        self.paths, self.resolution, self.read = paths, resolution, read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.read(self.paths[i], self.resolution)


def _as_list(batch: list) -> list:
    return batch  # arrays and reasons as they are: no collation into one tensor


def store_key(paths: list[Path], resolution: int) -> str:
    """A store's content key: every file's path, size and mtime, in order; the resolution; the crop."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return content_key(KIND, STORE_VERSION, CROP, resolution, len(paths), h.hexdigest())


def resolve_workers(workers: int | None) -> int:
    """The decode processes: `workers` as given (0: decode in this process), None: one per core (at most 16)."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_AUTO_WORKERS, cores)


@contextmanager
def _locked(folder: Path):
    """Exclusive use of a store folder across processes (released when the holder exits, even by kill -9)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_finished(folder: Path, n: int, resolution: int) -> tuple[np.ndarray, dict] | None:
    """The finished store's array (read-only memmap) and meta; None when absent or damaged (then removed)."""
    data, meta_file = folder / "images.npy", folder / "meta.json"
    if not data.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        array = np.load(data, mmap_mode="r")
        want = (n, resolution, resolution, 3)
        if tuple(array.shape) != want or tuple(meta["shape"]) != want or array.dtype != np.uint8:
            raise ValueError(f"shape {tuple(array.shape)} {array.dtype}, meta {meta['shape']}, expected {want}")
        if array.offset + array.nbytes != data.stat().st_size:
            raise ValueError(f"{data.stat().st_size} bytes, expected {array.offset + array.nbytes}")
    except (OSError, ValueError, KeyError) as e:  # truncated, overwritten, meta missing or unreadable
        warnings.warn(f"image store {folder} is damaged ({e}); decoding its files again", stacklevel=3)
        data.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)
        return None
    return array, meta


def _resume_point(partial: Path, progress: Path, shape: tuple) -> tuple[int, dict]:
    """(rows already on disk, {row: reason} of the undecodable ones) of an interrupted decode, or (0, {})."""
    try:
        p = json.loads(progress.read_text())
        if tuple(p["shape"]) == shape and partial.is_file() and np.load(partial, mmap_mode="r").shape == shape:
            return int(p["done"]), {int(k): v for k, v in p["unreadable"].items()}
    except (OSError, ValueError, KeyError):
        pass
    return 0, {}


def _decode(paths: list[Path], resolution: int, read: Callable, workers: int, folder: Path,
            log: Callable[[str], object]) -> dict:
    """Decode `paths` into folder/images.npy (resuming an interrupted decode); returns the meta written."""
    shape = (len(paths), resolution, resolution, 3)
    partial, progress_file = folder / "images.npy.partial", folder / "progress.json"
    done, unreadable = _resume_point(partial, progress_file, shape)
    array = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=np.uint8, shape=shape)
    workers = min(workers, -(-(len(paths) - done) // DECODE_BATCH))
    loader = torch.utils.data.DataLoader(_Files(paths[done:], resolution, read), batch_size=DECODE_BATCH,
                                         num_workers=workers, collate_fn=_as_list)
    progress = Progress(len(paths) - done, f"image store: decoding {folder.name}", log, every=30.0, unit="images")
    t0, saved = time.time(), done

    def save_progress():
        array.flush()  # the rows counted as done are on disk before progress.json says so
        atomic_write_json(progress_file, {"shape": list(shape), "done": done,
                                          "unreadable": {str(k): v for k, v in unreadable.items()}})
    for batch in loader:
        for item in batch:
            if isinstance(item, str):
                unreadable[done] = item  # its row stays zero and is never read (bench/data.py leaves it out)
            else:
                array[done] = item
            done += 1
        progress.update(len(batch))
        if done - saved >= PROGRESS_EVERY:
            save_progress()
            saved = done
    save_progress()
    seconds = time.time() - t0
    del array
    meta = {"shape": list(shape), "dtype": "uint8", "layout": "N, H, W, C", "files": len(paths),
            "unreadable": {str(k): v for k, v in sorted(unreadable.items())}, "crop": CROP, "version": STORE_VERSION,
            "decoded": {"files": progress.done, "seconds": round(seconds, 2),
                        "img_per_s": round(progress.done / max(seconds, 1e-9), 1), "workers": workers}}
    atomic_write_json(folder / "meta.json", meta)
    os.replace(partial, folder / "images.npy")  # the finished file appears only now, whole
    progress_file.unlink(missing_ok=True)
    return meta


def open_store(root: Path, paths: list[Path], resolution: int, read: Callable, workers: int | None = None,
               log: Callable[[str], object] | None = None) -> tuple[np.ndarray, dict[int, str], str, Path]:
    """The store of `paths` at `resolution` under root/image_store: decoded now unless a finished one exists.

    `read(path, resolution)` returns a file's (R, R, 3) uint8 array or a one-line reason it cannot be decoded
    (a module-level function: decode workers call it). Returns the read-only memmap (N, R, R, 3), the rows
    that could not be decoded {row: reason}, the store's key and folder.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    key = store_key(paths, resolution)
    folder = Path(root) / KIND / key
    with _locked(folder):
        found = _open_finished(folder, len(paths), resolution)
        if found is None:
            log(f"image store: decoding {len(paths)} files at {resolution} px into {folder} "
                f"({resolve_workers(workers)} worker(s); once: later runs map the file)")
            _decode(paths, resolution, read, resolve_workers(workers), folder, log)
            found = _open_finished(folder, len(paths), resolution)
            if found is None:
                raise RuntimeError(f"image store {folder}: the file just written does not open")
    array, meta = found
    return array, {int(k): v for k, v in meta["unreadable"].items()}, key, folder
