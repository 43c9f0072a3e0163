"""The one registry of priors: a strict decorator, lookup by name or `module:Class`."""
from __future__ import annotations

import re

from bench.lookup import by_name

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

    return by_name("prior", name, _PRIORS, "module:Class", lambda c: isinstance(c, type) and issubclass(c, Prior),
                   "the class subclasses priors.base.Prior and sets its `info` record")
