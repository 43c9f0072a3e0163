"""The one config path: preset table -> config file -> CLI overrides -> a frozen dataclass.

Every run resolves its settings through `resolve()`; the result is written into the run folder
and hashed, and `--dry-run` prints it. Unknown keys and badly typed values are errors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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


def build(cls, values: dict, path: str = ""):
    """Instantiate cls from a dict, coercing strings to the field types; unknown keys are errors.

    `path` is the dotted section being built ("dmvae.tokenizer"), so every message names the setting
    as it is written on the command line.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            inside = [p for p in _paths(cls) if p.endswith(f".{key}")]
            if inside:  # a setting of a section given without the section's name
                raise UserError(f"Unknown setting '{path}{key}': it is a setting of a section, so give it as "
                                f"{' or '.join(f'{path}{p}' for p in inside)}, e.g. --set {path}{inside[0]}=...")
            raise unknown("setting", f"{path}{key}", [f"{path}{f}" for f in fields])
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]):
            if not isinstance(v, dict):
                raise UserError(f"'{path}{k}' is a section of settings, not a value (got {v!r}). Set its keys "
                                f"one by one, e.g. --set {path}{k}.{next(iter(_field_names(hints[k])))}=..., or "
                                f"give a JSON object for it in the config file (--dry-run lists them).")
            kwargs[k] = build(hints[k], v, f"{path}{k}.")
        else:
            kwargs[k] = _coerce(f"{path}{k}", v, hints[k])
    try:
        return cls(**kwargs)
    except SettingError as e:
        raise UserError(f"Setting '{path}{e.field}' {e.why}, got {e.value!r}. Give a valid value with --set "
                        f"{path}{e.field}=... or in the config file (--dry-run shows every setting).") from None
    except (TypeError, ValueError) as e:
        where = f"section '{path[:-1]}'" if path else "the settings"
        raise UserError(f"Invalid value in {where}: {e}. Check the values given with --set or in the config "
                        f"file (run with --dry-run to see them).") from None


class SettingError(ValueError):
    """One setting out of its range; build() turns it into a message naming the dotted setting."""

    def __init__(self, field: str, why: str, value):
        super().__init__(f"{field} {why}, got {value!r}")
        self.field, self.why, self.value = field, why, value


def require(cfg, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
            fraction: tuple[str, ...] = (), choices: dict | None = None) -> None:
    """Range checks for a config's __post_init__: each failure names the field (SettingError).

    positive: > 0; non_negative: >= 0; fraction: in [0, 1]; choices: {field: allowed values}.
    Run when the config is resolved, so a bad value stops `--dry-run` and the run before any work.
    """
    for f in positive:
        if not getattr(cfg, f) > 0:
            raise SettingError(f, "must be greater than 0", getattr(cfg, f))
    for f in non_negative:
        if not getattr(cfg, f) >= 0:
            raise SettingError(f, "must be 0 or more", getattr(cfg, f))
    for f in fraction:
        if not 0 <= getattr(cfg, f) <= 1:
            raise SettingError(f, "must lie in [0, 1]", getattr(cfg, f))
    for f, allowed in (choices or {}).items():
        if getattr(cfg, f) not in allowed:
            raise SettingError(f, f"must be one of {', '.join(map(str, allowed))}", getattr(cfg, f))


def _paths(cls, prefix: str = "") -> list[str]:
    """Every dotted setting of a config class, sections included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _paths(hints[f.name], f"{prefix}{f.name}.")
    return out


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def added_later(default, since: str):
    """A setting added after run folders existed, whose `default` reproduces the behaviour from before
    it existed (`since`: the change that added it). While at that default it is left out of the
    config hash, the stage keys (keyed_dict) and the comparison of merged runs (results.json
    meta.config_neutral), so finished stages and earlier runs stay valid and pool; set to anything
    else, it counts like every other setting. Only immutable defaults (numbers, strings, tuples)."""
    return dataclasses.field(default=default, metadata={"added_later": since})


def not_hashed(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING):
    """A setting, or a whole section, that changes no number: how a run is watched (experiment logging),
    not what it computes. Whatever its value, it is left out of the config hash, the stage keys
    (keyed_dict) and the comparison of merged runs (listed in results.json meta.config_neutral), so
    turning it on or off reuses every finished stage and pools with every other run. It is still
    resolved, checked and shown like any setting (--set, --dry-run, meta.config)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"not_hashed": True})


def neutral_keys(cfg, prefix: str = "") -> list[str]:
    """Dotted names of the settings of cfg (recursively) that do not count: every not_hashed setting or
    section, and the added_later settings at their neutral default."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "not_hashed" in f.metadata:
            out.append(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(value):
            out += neutral_keys(value, f"{prefix}{f.name}.")
        elif "added_later" in f.metadata and value == f.default:
            out.append(f"{prefix}{f.name}")
    return out


def drop_keys(d: dict, dotted: list[str]) -> dict:
    """A copy of a nested dict without the given dotted keys."""
    out = json.loads(json.dumps(d, default=str))
    for key in dotted:
        *path, last = key.split(".")
        node = out
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def keyed_dict(cfg) -> dict:
    """The config as it enters hashes and stage keys: to_dict without the neutral settings (neutral_keys)."""
    return drop_keys(to_dict(cfg), neutral_keys(cfg))


def config_hash(cfg) -> str:
    """A short content hash of the resolved config (sorted-key JSON, neutral settings left out)."""
    blob = json.dumps(keyed_dict(cfg), sort_keys=True, default=str).encode()
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
            out = hint(value)
            if hint is float and not math.isfinite(out):
                raise UserError(f"Setting '{key}' must be a finite number, got {value!r}: NaN and infinity "
                                f"are not settings (results.json could not record them). Give a finite value "
                                f"with --set {key}=...") from None
            return out
    except (ValueError, TypeError):
        name = getattr(hint, "__name__", str(hint))
        raise UserError(f"Setting '{key}' expects {name}, got {value!r}. Give a value of that "
                        f"type, e.g. --set {key}=...") from None
    return value
