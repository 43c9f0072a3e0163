"""The config path's rules for settings that do not count: added after run folders existed (bench/config.py
added_later), and never hashed at all (not_hashed: experiment logging)."""
from dataclasses import dataclass, field

from bench.config import added_later, config_hash, keyed_dict, neutral_keys, not_hashed, to_dict


@dataclass(frozen=True)
class _Inner:
    steps: int = 10
    flip: bool = added_later(False, "test")


@dataclass(frozen=True)
class _Before:  # the config as it was before `flip` and `scales` existed
    inner: _Inner = field(default_factory=lambda: _InnerBefore())
    n: int = 3


@dataclass(frozen=True)
class _InnerBefore:
    steps: int = 10


@dataclass(frozen=True)
class _After:
    inner: _Inner = field(default_factory=_Inner)
    n: int = 3
    scales: tuple[float, ...] = added_later((), "test")


def test_added_settings_at_their_default_leave_hash_and_keys_unchanged():
    assert neutral_keys(_After()) == ["inner.flip", "scales"]
    assert config_hash(_After()) == config_hash(_Before())
    assert keyed_dict(_After()) == {"inner": {"steps": 10}, "n": 3}


def test_added_settings_count_once_set():
    flipped = _After(inner=_Inner(flip=True))
    assert neutral_keys(flipped) == ["scales"]
    assert config_hash(flipped) != config_hash(_After())
    assert keyed_dict(_After(scales=(1.0, 2.0)))["scales"] == [1.0, 2.0]


# ------------------------------------------------------------------------------ not_hashed
@dataclass(frozen=True)
class _Watch:
    board: bool = False
    every: int = 10


@dataclass(frozen=True)
class _Watched:  # _After with a not_hashed section and a not_hashed setting
    inner: _Inner = field(default_factory=_Inner)
    n: int = 3
    scales: tuple[float, ...] = added_later((), "test")
    watch: _Watch = not_hashed(default_factory=_Watch)
    label: str = not_hashed("")


def test_not_hashed_settings_never_count_whatever_their_value():
    for cfg in (_Watched(), _Watched(watch=_Watch(board=True, every=3), label="mine")):
        assert neutral_keys(cfg) == ["inner.flip", "scales", "watch", "label"]
        assert config_hash(cfg) == config_hash(_Before())
        assert keyed_dict(cfg) == {"inner": {"steps": 10}, "n": 3}
    assert to_dict(_Watched(label="mine"))["label"] == "mine"  # still resolved and shown
