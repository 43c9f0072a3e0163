"""The one config path: preset table -> config file -> CLI overrides -> a frozen dataclass.

Every run resolves its settings through `resolve()`; the result is written into the run folder
and hashed, and `--dry-run` prints it. Unknown keys and badly typed values are errors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path

from bench.errors import UserError, unknown


def resolve(cls, presets: dict[str, dict], preset: str, config_file: str | None = None,
            overrides: list[str] | None = None, extra: dict | None = None):
    """Build a frozen `cls` from presets[preset], then a JSON config file, then KEY=VALUE overrides.

    `extra` holds values already parsed by dedicated CLI flags (applied after the file, before
    the generic overrides). A field that is itself a dataclass (a stage's config) takes a nested
    JSON object in the file and dotted keys on the command line: --set dmvae.lr=1e-4.
    """
    if preset not in presets:
        raise unknown("preset", preset, presets)
    values: dict = _plain(presets[preset])
    if config_file:
        _merge(values, _read_config_file(config_file))
    _merge(values, {k: v for k, v in (extra or {}).items() if v is not None})
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"Override '{item}' is not of the form KEY=VALUE; for example "
                            f"--set seed=1.")
        key, raw = item.split("=", 1)
        *path, last = key.strip().split(".")
        node = values
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # build() names it as an unknown (or mistyped) setting
            node = node[part]
        node[last] = raw
    return build(cls, values)


def build(cls, values: dict):
    """Instantiate cls from a dict, coercing strings to the field types; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise unknown(f"setting of {cls.__name__}", key, fields)
    hints = typing.get_type_hints(cls)
    kwargs = {k: build(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict)
              else _coerce(k, v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"Invalid settings for {cls.__name__}: {e}. Check the values given with "
                        f"--set or in the config file (run with --dry-run to see them).") from None


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def config_hash(cfg) -> str:
    """A short content hash of the resolved config (sorted-key JSON)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _plain(values: dict) -> dict:
    """A preset as nested dicts (dataclass values become dicts, so they merge key by key)."""
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}


def _merge(dst: dict, src: dict) -> None:
    """Update dst with src, merging nested dicts instead of replacing them."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Config file '{path}' does not exist. Pass the path of a JSON file "
                        f"whose keys are settings (see --dry-run for the full list).")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"Config file '{path}' is not valid JSON ({e}). Fix the file or pass "
                        f"settings with --set KEY=VALUE instead.") from None
    if not isinstance(data, dict):
        raise UserError(f"Config file '{path}' must hold a JSON object of settings.")
    return data


def _coerce(key: str, value, hint):
    """Turn CLI strings (and JSON values) into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [s.strip() if isinstance(s, str) else s for s in items if s != ""]
            inner = args[0] if args else str
            return tuple(_coerce(key, x, inner) for x in items)
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
    except (ValueError, TypeError):
        name = getattr(hint, "__name__", str(hint))
        raise UserError(f"Setting '{key}' expects {name}, got {value!r}. Give a value of that "
                        f"type, e.g. --set {key}=...") from None
    return value
