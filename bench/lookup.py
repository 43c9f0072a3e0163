"""Lookup by name, or a user's plug-in as `module:attr`: the one rule both registries follow
(priors/registry.py for priors, bench/toy2d/targets.py for toy targets)."""
from __future__ import annotations

import importlib

from bench.errors import UserError, unknown


def by_name(kind: str, name: str, table: dict, plugin: str, check, requirement: str):
    """table[name]; else `module:attr` imported from the current directory, accepted when check(obj).

    kind names the thing ("prior"); plugin is the plug-in form ("module:Class"); requirement says
    what a plug-in must be. Every failure is one UserError paragraph.
    """
    if name in table:
        return table[name]
    if ":" not in name:
        raise unknown(kind, name, [*table, plugin])
    mod, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"Could not load the {kind} '{name}' ({e}). Give {plugin} importable from the current "
                        f"directory, where {requirement}.") from None
    if not check(obj):
        raise UserError(f"'{name}' is not a valid {kind}: {requirement}.")
    return obj
