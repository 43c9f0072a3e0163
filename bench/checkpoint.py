"""Checkpoints of nested training state as safetensors + a JSON sidecar (never pickles).

A state is any nest of dicts/lists holding tensors and JSON scalars (model and optimiser
state_dicts, step counters, RNG states). Tensors go to `<path>.safetensors` under their
flattened key; everything else, the nest's structure and the tensor file's sha256 go to
`<path>.json`. Both are written atomically, the sidecar last, so a checkpoint interrupted by a
kill is either the previous one or the new one, never half of each.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.cache import read_tensor_file, write_tensor_file
from bench.io import atomic_write_json


def save_state(path: Path | str, state) -> None:
    """Write a nested state to path.safetensors + path.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    sha = write_tensor_file(path.with_name(path.name + ".safetensors"), tensors)
    atomic_write_json(path.with_name(path.name + ".json"), {"skeleton": skeleton, "sha256": sha})


def load_state(path: Path | str):
    """The nested state saved at path, or None when absent or damaged (sha256 mismatch)."""
    path = Path(path)
    meta_file, data_file = path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")
    if not meta_file.is_file() or not data_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        return _unflatten(meta["skeleton"], read_tensor_file(data_file, meta["sha256"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def _flatten(obj, prefix: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"checkpoint keys must be str or int at '{prefix}'")
        return {"__dict__": [[k, _flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at '{prefix}'")


def _unflatten(node, tensors: dict):
    if isinstance(node, dict) and "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if isinstance(node, dict) and "__dict__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
    if isinstance(node, dict) and "__list__" in node:
        return [_unflatten(v, tensors) for v in node["__list__"]]
    return node
