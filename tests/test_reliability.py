"""Reliability findings of issue 11: bad input and a failing environment end in one clear paragraph.

Each test reproduces one finding (it failed before the fix). The machine runs the tests as root, so
an unwritable folder is simulated by making the write raise the OSError a read-only folder gives.
"""
import errno
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.io import atomic_write_bytes, atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reports import write_study  # noqa: E402  (the hand-written results folder of the report tests)


def _one_paragraph(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ 9: output files honour the umask
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


# ------------------------------------------------------------------ 10: report.md escapes HTML
def test_markdown_report_escapes_html_from_names_reasons_and_command(tmp_path):
    from reports import build_report

    out = write_study(tmp_path / "s")
    res = json.loads((out / "results.json").read_text())
    res["priors"]["bad<script>x|y"] = {"status": "failed", "reason": "NaN <img src=x onerror=alert(1)> & more"}
    res["meta"]["command"] = "run_all.py --priors '<b>bold</b>'"
    (out / "results.json").write_text(json.dumps(res))
    md = build_report(out)[0].read_text()
    assert "<script" not in md and "<img" not in md and "<b>" not in md
    assert "bad&lt;script&gt;x\\|y" in md  # a table cell: | escaped as well
    assert "NaN &lt;img src=x onerror=alert(1)&gt; &amp; more" in md
    assert "&lt;b&gt;bold&lt;/b&gt;" in md


# ------------------------------------------------------------------ 12: results.json without meta.config
@pytest.mark.parametrize("version", [1, 2])
def test_report_and_merge_of_results_without_config_are_one_paragraph(tmp_path, capsys, version):
    runs = []
    for name in ("a", "b"):
        out = write_study(tmp_path / name)
        res = json.loads((out / "results.json").read_text())
        res["meta"]["schema_version"] = version
        del res["meta"]["config"]
        (out / "results.json").write_text(json.dumps(res))
        runs.append(str(out))
    need = "schema version 1" if version == 1 else "no meta.config block"
    assert main(["report", runs[0]]) == 2  # run_all.py report DIR
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert need in err and "results.json" in err
    assert main(["report", str(tmp_path / "merged"), *runs]) == 2  # run_all.py report OUT RUN_DIR RUN_DIR
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert need in err and not (tmp_path / "merged" / "results.json").exists()


# ------------------------------------------------------------------ 11: stale locks after a reboot / pid reuse
def _lock(tmp_path, **fields):
    from bench.runlock import boot_id, process_start

    holder = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00",
              "boot_id": boot_id(), "pid_start": process_start(os.getpid())}
    holder.update(fields)
    (tmp_path / ".run.lock").write_text(json.dumps({k: v for k, v in holder.items() if v is not None}))


def test_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    from bench.runlock import RunLock, process_start

    assert process_start(os.getpid()) is not None  # Linux: the identity can be read
    _lock(tmp_path, pid_start=process_start(os.getpid()) - 1)  # our pid, but a process that started earlier
    with RunLock(tmp_path) as lock:
        assert lock.stale["pid"] == os.getpid()
        held = json.loads((tmp_path / ".run.lock").read_text())
        assert held["pid_start"] == process_start(os.getpid()) and held["boot_id"]
    assert not (tmp_path / ".run.lock").exists()


def test_lock_from_before_a_reboot_is_taken_over(tmp_path):
    from bench.runlock import RunLock

    _lock(tmp_path, boot_id="00000000-0000-0000-0000-000000000000")  # a live pid, but another boot
    with RunLock(tmp_path) as lock:
        assert lock.stale["boot_id"].startswith("00000000")


@pytest.mark.parametrize("old_format", [False, True])
def test_refusal_names_the_lock_file_and_the_override(tmp_path, old_format):
    from bench.runlock import RunLock

    # a live run of this process; an old lock (pid and host only) keeps the pid rule: refused too
    _lock(tmp_path, **({"boot_id": None, "pid_start": None} if old_format else {}))
    with pytest.raises(UserError) as e:
        with RunLock(tmp_path):
            pass
    msg = str(e.value)
    assert "Another run" in msg and str(tmp_path / ".run.lock") in msg and "remove" in msg
    assert (tmp_path / ".run.lock").exists()  # a live run's lock is never removed


# ------------------------------------------------------------------ 7: --out turning read-only mid-run
def _study_whose_out_turns_read_only(tmp_path, monkeypatch, lock_removable: bool):
    """The real CLI and runner, with the costly parts stubbed, and the first stage write failing as on a
    read-only folder (we run as root, so chmod would not stop the writes)."""
    from bench.study import runner

    out = tmp_path / "out"

    read_only = []

    class ReadOnlyStage:
        def __init__(self, *a, **k):
            read_only.append(True)  # from here on every atomic write into out fails
            raise OSError(errno.EROFS, "Read-only file system", str(out / "stages" / "gaussian" / "record.json"))

    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if read_only and Path(dir).resolve().is_relative_to(out.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*a, dir=dir, **k)
    monkeypatch.setattr("bench.io.tempfile.mkstemp", mkstemp)

    monkeypatch.setattr(runner, "_meta", lambda *a, **k: {"schema_version": runner.SCHEMA_VERSION, "config_hash": "x",
                                                           "provenance": {}, "feature_source": {}, "stage_keys": {}})
    monkeypatch.setattr(runner.Context, "floors", None)  # no Inception here
    monkeypatch.setattr(runner, "PriorRun", ReadOnlyStage)
    if not lock_removable:
        real_unlink = Path.unlink

        def unlink(self, *a, **k):
            if self.name == ".run.lock":
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_unlink(self, *a, **k)
        monkeypatch.setattr(Path, "unlink", unlink)
    rc = main(["--preset", "smoke", "--dataset", "synthetic", "--priors", "gaussian", "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    return out, rc


def test_out_turning_read_only_is_one_paragraph_and_the_lock_is_removed(tmp_path, monkeypatch, capsys):
    out, rc = _study_whose_out_turns_read_only(tmp_path, monkeypatch, lock_removable=True)
    err = capsys.readouterr().err
    assert rc == 2
    _one_paragraph(err)
    assert f"The output folder '{out}' became unwritable" in err and "Read-only file system" in err
    assert "is kept" in err and "lock was removed" in err
    assert not (out / ".run.lock").exists()


def test_out_turning_read_only_names_a_lock_it_cannot_remove(tmp_path, monkeypatch, capsys):
    out, rc = _study_whose_out_turns_read_only(tmp_path, monkeypatch, lock_removable=False)
    err = capsys.readouterr().err
    assert rc == 2
    _one_paragraph(err)
    assert f"lock file '{out / '.run.lock'}' could not be removed" in err


# ------------------------------------------------------------------ 2: an unwritable cache folder
@pytest.mark.parametrize("how", ["--cache-dir", "$DMVAE_CACHE"])
def test_unwritable_cache_folder_is_one_paragraph_before_any_work(tmp_path, monkeypatch, capsys, how):
    from bench.study import runner

    monkeypatch.setattr(runner, "run_study", lambda *a, **k: pytest.fail("the study started"))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--preset", "smoke", "--dataset", "synthetic", "--priors", "gaussian", "--out", str(tmp_path / "out")]
    if how == "--cache-dir":
        argv += ["--cache-dir", str(a_file)]
    else:
        monkeypatch.setenv("DMVAE_CACHE", str(a_file / "sub"))  # below a file: cannot be created
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "Cannot write to the cache folder" in err and how in err
    assert main(["priors", "--check", "--priors", "gaussian", "--dataset", "synthetic",
                 *(["--cache-dir", str(a_file)] if how == "--cache-dir" else [])]) == 2
    assert "Cannot write to the cache folder" in capsys.readouterr().err


def test_dataset_downloads_go_to_the_cache_root(tmp_path, monkeypatch):
    import torchvision.datasets
    from bench.data import DataSpec, load_dataset

    roots = []

    class Offline:  # CIFAR10 absent and no network
        def __init__(self, root, train, download):
            roots.append(Path(root))
            raise RuntimeError("Dataset not found or corrupted.")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    monkeypatch.setenv("DMVAE_CACHE", str(tmp_path / "env-cache"))
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_dataset(DataSpec("cifar10", 32))
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_dataset(DataSpec("cifar10", 32, cache_dir=str(tmp_path / "flag-cache")))
    assert set(roots) == {tmp_path / "env-cache" / "data", tmp_path / "flag-cache" / "data"}


# ------------------------------------------------------------------ 6: stage records carry a checksum
def test_edited_stage_record_is_damaged_and_recomputed(tmp_path):
    import torch
    from bench.study.stages import StageStore

    store = StageStore(tmp_path)
    store.save("gaussian", "evaluate", "k1", {"w": torch.ones(2)}, {"rfid": 12.5, "gfid": {"mean": 40.0}},
               collective=False)
    state, record = store.load("gaussian", "evaluate", "k1")
    assert record["rfid"] == 12.5 and record["gfid"] == {"mean": 40.0} and "record_sha256" not in record
    path = store.dir("gaussian", "evaluate", "k1") / "record.json"
    path.write_text(path.read_text().replace("12.5", "1.5"))  # a better-looking number, by hand
    with pytest.warns(UserWarning, match=f"stage record {path} does not match its checksum"):
        assert store.load("gaussian", "evaluate", "k1") is None  # damaged: the stage recomputes
    store.save("gaussian", "evaluate", "k1", {"w": torch.ones(2)}, {"rfid": 12.5}, collective=False)
    assert store.load("gaussian", "evaluate", "k1")[1]["rfid"] == 12.5


def test_stage_record_of_older_code_without_checksum_still_loads(tmp_path):
    from bench.study.stages import StageStore

    store = StageStore(tmp_path)
    d = store.dir("gaussian", "prior", "k0")
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps({"provenance": {"source": "analytic"}, "key": "k0"}))
    assert store.load("gaussian", "prior", "k0", tensors=False)[1]["provenance"] == {"source": "analytic"}


# ------------------------------------------------------------------ 1: unreadable files in an imagefolder
def _image_tree(root: Path, per_class: int, classes=("cat", "dog")) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):  # noise: the image data fills most of the file
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / "train" / c / f"{i:03d}.png")
    return root


def _damage(root: Path, cls: str, n: int, truncate_first: bool = True) -> list[str]:
    """Truncate the first n files of a class (the first only when truncate_first) and replace the others
    with text: before the fix, either ended the run with a traceback."""
    files = sorted((root / "train" / cls).glob("*.png"))[:n]
    for i, f in enumerate(files):
        if i == 0 and truncate_first:
            f.write_bytes(f.read_bytes()[:200])  # OSError: image file is truncated
        else:
            f.write_text("not an image")        # PIL.UnidentifiedImageError
    return [str(f) for f in files]


def test_a_few_unreadable_images_are_skipped_and_recorded(tmp_path, capsys):
    from bench.data import DataSpec, load_dataset

    root = _image_tree(tmp_path, 110)  # 220 files: 2 unreadable is within 1%
    bad = _damage(root, "cat", 1) + _damage(root, "dog", 1, truncate_first=False)
    s = load_dataset(DataSpec("imagefolder", 8, root=str(root)))
    assert len(s.train) + len(s.val) + len(s.test) == 218
    assert [Path(x.split(" (")[0]) for x in s.skipped] == sorted(map(Path, bad))
    assert "skipped 2 unreadable image file(s) of 220 read" in s.source and all(b in s.source for b in bad)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image file(s)" in err and all(b in err for b in bad)


def test_skipped_images_reach_results_json(tmp_path, monkeypatch, capsys):
    from bench.study import runner

    class Failing:
        def __init__(self, *a, **k):
            raise UserError("stub prior")
    monkeypatch.setattr(runner, "_meta", lambda *a, **k: {"schema_version": runner.SCHEMA_VERSION, "provenance": {},
                                                           "feature_source": {}, "stage_keys": {}})
    monkeypatch.setattr(runner.Context, "floors", None)
    monkeypatch.setattr(runner, "PriorRun", Failing)
    root = _image_tree(tmp_path / "data", 110)
    bad = _damage(root, "dog", 1)
    out = tmp_path / "out"
    main(["--preset", "smoke", "--dataset", "imagefolder", "--data-root", str(root), "--resolution", "8",
          "--priors", "gaussian", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    data = json.loads((out / "results.json").read_text())["meta"]["data"]
    assert [x.split(" (")[0] for x in data["skipped_files"]] == bad and bad[0] in data["source"]


@pytest.mark.parametrize("case", ["share", "class"])
def test_too_many_unreadable_images_is_one_paragraph(tmp_path, case):
    from bench.data import DataSpec, load_dataset

    if case == "share":  # 3 of 20 files
        root = _image_tree(tmp_path, 10)
        bad = _damage(root, "cat", 3)
        need = "more than 1% of them are unreadable"
    else:                # 1 of 221 files, but the only one of its class
        root = _image_tree(tmp_path, 110)
        _image_tree(tmp_path / "more", 1, ("bird",))
        (tmp_path / "more" / "train" / "bird").rename(root / "train" / "bird")
        bad = _damage(root, "bird", 1)
        need = "every file read of class bird is unreadable"
    with pytest.raises(UserError) as e:
        load_dataset(DataSpec("imagefolder", 8, root=str(root)))
    msg = str(e.value)
    assert need in msg and all(b in msg for b in bad) and "\n" not in msg and "Replace or remove" in msg
