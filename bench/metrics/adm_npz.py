"""Image batches in the ADM `.npz` layout (openai/guided-diffusion's evaluator): read, validate, write.

A batch file holds `arr_0`: uint8 images (N, H, W, 3), NHWC. A reference batch may also hold the
Inception statistics of its dataset: `mu`, `sigma` (pool3, 2048-d) and `mu_s`, `sigma_s` (the
spatial features behind sFID). Files are read with allow_pickle=False, so a file can hold arrays
only; anything else is refused with one paragraph.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.metrics.fid import to_uint8

IMAGES = "arr_0"
STATS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
LAYOUT = "ADM layout: arr_0 = uint8 images (N, H, W, 3), NHWC, optional mu/sigma and mu_s/sigma_s"


@dataclass(frozen=True)
class Batch:
    """One validated batch file: images (N, H, W, 3) uint8 and any stored statistics (float64)."""

    path: Path
    images: np.ndarray
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # "pool" / "spatial" -> (mu, sigma)

    def torch_images(self) -> torch.Tensor:
        """(N, 3, H, W) uint8 view for the Inception network."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2)


def _refuse(path: Path, problem: str, fix: str = "") -> UserError:
    return UserError(f"'{path}' is not a usable image batch: {problem}. Expected the {LAYOUT}."
                     + (f" {fix}" if fix else ""))


def read_batch(path: Path | str, min_images: int = 2) -> Batch:
    """Load and validate an ADM-layout batch; every problem is one paragraph (UserError)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The image batch '{path}' does not exist (or is not a file). Pass the path "
                        f"of an .npz file in the {LAYOUT}.")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _refuse(path, f"numpy cannot read it ({type(e).__name__}: {e})",
                      "Save it with numpy.savez(path, arr_0=images).") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _refuse(path, "it is a single .npy array, not an .npz archive",
                      "Save it with numpy.savez(path, arr_0=images).")
    with npz:
        if IMAGES not in npz.files:
            raise _refuse(path, f"it has no '{IMAGES}' array (it holds: {', '.join(npz.files) or 'nothing'})")
        images = _array(npz, IMAGES, path)
        stats = {}
        for kind, (m, s) in STATS.items():
            present = [k for k in (m, s) if k in npz.files]
            if len(present) == 1:
                raise _refuse(path, f"it holds '{present[0]}' without its partner "
                                    f"('{m}' and '{s}' go together)")
            if present:
                stats[kind] = _stats(_array(npz, m, path), _array(npz, s, path), m, s, path)
    _check_images(images, path, min_images)
    return Batch(path, images, stats)


def _array(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:  # object arrays need pickle, which is refused
        raise _refuse(path, f"'{key}' cannot be read without unpickling Python objects ({e})",
                      "Store plain numeric arrays only.") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise _refuse(path, f"'{key}' is damaged ({type(e).__name__}: {e})") from None


def _check_images(x: np.ndarray, path: Path, min_images: int) -> None:
    if x.dtype != np.uint8:
        raise _refuse(path, f"'{IMAGES}' has dtype {x.dtype}, not uint8",
                      "Quantise images first (bench.metrics.adm_npz.write_batch does: round((x + 1) * 127.5) "
                      "for floats in [-1, 1]).")
    if x.ndim != 4:
        raise _refuse(path, f"'{IMAGES}' has shape {tuple(x.shape)} (rank {x.ndim}), not rank 4 (N, H, W, 3)")
    if x.shape[-1] != 3:
        nchw = " It looks channels-first (N, C, H, W); transpose to (N, H, W, C)." if x.shape[1] in (1, 3) else ""
        raise _refuse(path, f"'{IMAGES}' has shape {tuple(x.shape)}: the last axis has {x.shape[-1]} channels, "
                            f"not 3 (RGB).{nchw}")
    if len(x) < min_images:
        raise _refuse(path, f"'{IMAGES}' holds {len(x)} images; at least {min_images} are needed")


def _stats(mu: np.ndarray, sigma: np.ndarray, m: str, s: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise _refuse(path, f"'{m}' {tuple(mu.shape)} and '{s}' {tuple(sigma.shape)} are not a mean (D,) and "
                            f"a covariance (D, D)")
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise _refuse(path, f"'{m}'/'{s}' have dtypes {mu.dtype}/{sigma.dtype}, not floating point")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise _refuse(path, f"'{m}' or '{s}' holds NaN or infinite values")
    return mu.astype(np.float64), sigma.astype(np.float64)


def to_adm_array(images) -> np.ndarray:
    """Images (N, 1|3, H, W) as a uint8 tensor or floats in [-1, 1] -> (N, H, W, 3) uint8 numpy.

    Floats are quantised as everywhere in the suite (bench.metrics.fid.to_uint8: round((x + 1) * 127.5),
    clamped); grey images are replicated to RGB.
    """
    return to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()


def write_batch(path: Path | str, images, **stats: np.ndarray) -> Path:
    """Save images as an ADM-layout .npz (`arr_0` uint8 NHWC, plus e.g. mu=, sigma=), atomically."""
    from bench.io import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **{IMAGES: to_adm_array(images)}, **{k: np.asarray(v) for k, v in stats.items()})
    atomic_write_bytes(path, buf.getvalue())
    return path
