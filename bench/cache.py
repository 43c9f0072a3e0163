"""Content-addressed store of tensors: safetensors + a JSON sidecar holding the file's sha256.

An entry lives at <root>/<kind>/<key>/ where key hashes everything that determines its content
(config, data fingerprint, code version). `load` verifies the sha256 before use; a corrupted or
half-written entry is reported and treated as missing, so the caller rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.io import atomic_write_json


def default_root() -> Path:
    """The cache root when --cache-dir is not given: $DMVAE_CACHE, else ~/.cache/dmvae-bench (read at call
    time, so every user of the cache, the data downloads included, sees the same folder)."""
    return Path(os.environ.get("DMVAE_CACHE") or Path.home() / ".cache" / "dmvae-bench")


def content_key(*parts) -> str:
    """A short sha256 over JSON-serialisable parts (sorted keys, so dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write tensors as safetensors atomically (temp file, then rename); returns the file's sha256.

    The one tensor-file format of the suite: the cache and the checkpoints (bench/checkpoint.py) both
    write it, each with a JSON sidecar (written after it) that records this sha256.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return sha256_file(path)


def read_tensor_file(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a file written by write_tensor_file, after checking its sha256 (ValueError if not).

    Cloned: safetensors maps the file, and a later rewrite would change the tensors under the caller.
    """
    if sha256_file(path) != sha256:
        raise ValueError(f"sha256 mismatch in {path}")
    return {k: v.clone() for k, v in load_file(str(path)).items()}


class Cache:
    """Save and load named tensors under (kind, key)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The entry's tensors and metadata, or None when missing or corrupted (then removed)."""
        d = self.path(kind, key)
        meta_file, data_file = d / "meta.json", d / "tensors.safetensors"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
            tensors = read_tensor_file(data_file, meta["sha256"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            warnings.warn(f"cache entry {d} is corrupted ({e}); rebuilding it", stacklevel=2)
            shutil.rmtree(d, ignore_errors=True)
            return None
        return tensors, meta

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
        """Write tensors then the sidecar (the sidecar last: an entry without it does not exist)."""
        d = self.path(kind, key)
        d.mkdir(parents=True, exist_ok=True)
        meta = {**meta, "sha256": write_tensor_file(d / "tensors.safetensors", tensors), "key": key, "kind": kind}
        atomic_write_json(d / "meta.json", meta)
        return meta
