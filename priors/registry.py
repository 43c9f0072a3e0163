"""The one registry of priors: a strict decorator, lookup by name or `module:Class`."""
from __future__ import annotations

import importlib
import re

from bench.errors import UserError, unknown

_PRIORS: dict[str, type] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_prior(cls):
    """Class decorator: register a Prior subclass under cls.info.name (unique, lower_snake)."""
    name = cls.info.name
    if not _NAME.match(name):
        raise ValueError(f"prior name '{name}' must be lower_snake_case")
    if name in _PRIORS:
        raise ValueError(f"prior '{name}' is registered twice ({_PRIORS[name]} and {cls})")
    _PRIORS[name] = cls
    return cls


def available() -> list[str]:
    """Registered prior names, in registration order."""
    return list(_PRIORS)


def get_prior(name: str) -> type:
    """The Prior class for a registered name or a user's `module:Class`."""
    from priors.base import Prior

    if name in _PRIORS:
        return _PRIORS[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"Could not load the prior '{name}' ({e}). Name a class importable "
                            f"from the current directory as module:Class, subclassing "
                            f"priors.base.Prior.") from None
        if not (isinstance(cls, type) and issubclass(cls, Prior)):
            raise UserError(f"'{name}' is not a subclass of priors.base.Prior; a user's prior "
                            f"must subclass it and set its `info` record.")
        return cls
    raise unknown("prior", name, available() + ["module:Class"])
