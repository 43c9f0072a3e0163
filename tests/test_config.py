"""The config path's rules for settings that do not count: added after run folders existed (bench/config.py
added_later), and never hashed at all (not_hashed: experiment logging)."""
import json
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from bench.cli import main
from bench.config import added_later, drop_keys, config_hash, keyed_dict, neutral_keys, not_hashed, resolve, to_dict
from bench.errors import UserError


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


def _study(*sets):
    from bench.study.config import STUDY_PRESETS, StudyConfig

    return resolve(StudyConfig, STUDY_PRESETS, "smoke", None, list(sets))


def test_log_settings_leave_hash_stage_keys_and_merge_comparison_unchanged(monkeypatch):
    from bench.data import DataSpec, load_dataset
    from bench.study.pipeline import PriorRun
    from reports.merge import _compared, _group_key

    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))  # importable, whether installed or not
    plain, logged = _study(), _study("log.tensorboard=true", "log.wandb=proj", "log.every=3")
    assert (logged.log.tensorboard, logged.log.wandb, logged.log.every) == (True, "proj", 3)
    assert config_hash(plain) == config_hash(logged) and "log" not in keyed_dict(logged)
    assert "log" in neutral_keys(plain) and "log" in neutral_keys(logged)
    data = load_dataset(DataSpec("synthetic", 32, limit=20))
    keys = [PriorRun(name, SimpleNamespace(cfg=cfg, data=data, data_fp="fp"), 0).keys
            for name in ("gaussian", "vae") for cfg in (plain, logged)]
    assert keys[0] == keys[1] and keys[2] == keys[3]
    before = drop_keys(to_dict(plain), neutral_keys(plain))  # a run written before `log` (and the other added settings) existed
    metas = [{"config": before, "config_neutral": []},
             *({"config": to_dict(c), "config_neutral": neutral_keys(c)} for c in (plain, logged))]
    assert len({_group_key(_compared(m)) for m in metas}) == 1  # merged runs pool


@pytest.mark.parametrize("setting, package, needle", [
    ("log.tensorboard=true", "tensorboard", "dmvae-bench[logging]"),
    ("log.wandb=proj", "wandb", "pip install wandb"),
])
def test_asking_for_a_missing_logging_package_is_one_paragraph(setting, package, needle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # not importable
    with pytest.raises(UserError, match="changes no number"):
        _study(setting)
    assert main(["--preset", "smoke", "--dry-run", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert needle in err and setting.split("=")[0] in err and "Traceback" not in err and err.count("\n") == 1


def test_log_settings_are_shown_and_checked(capsys):
    assert main(["--preset", "smoke", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["log"] == {"tensorboard": False, "wandb": None, "every": 10}
    for bad in ("log.every=0", "log.wandb= "):
        assert main(["--preset", "smoke", "--dry-run", "--set", bad]) == 2
        assert bad.split("=")[0] in capsys.readouterr().err
