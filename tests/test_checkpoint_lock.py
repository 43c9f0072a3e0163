"""Checkpoints round-trip without pickle; the run lock refuses a live run and takes over a dead one."""
import json
import os
import subprocess
import sys

import pytest
import torch

from bench.checkpoint import load_state, save_state
from bench.errors import UserError
from bench.runlock import RunLock


def test_optimizer_state_round_trips(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "model": net.state_dict(), "opt": opt.state_dict(),
             "rng": torch.get_rng_state(), "history": [1.5, None, "x"]}
    save_state(tmp_path / "ckpt", state)
    back = load_state(tmp_path / "ckpt")
    assert back["step"] == 7 and back["history"] == [1.5, None, "x"]
    assert torch.equal(back["rng"], state["rng"])
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(back["model"])
    opt2 = torch.optim.AdamW(net2.parameters())
    opt2.load_state_dict(back["opt"])
    assert opt2.state_dict()["param_groups"][0]["betas"] == [0.9, 0.95] or \
        tuple(opt2.state_dict()["param_groups"][0]["betas"]) == (0.9, 0.95)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_damaged_checkpoint_reads_as_missing(tmp_path):
    save_state(tmp_path / "c", {"w": torch.ones(10)})
    f = tmp_path / "c.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\1")
    assert load_state(tmp_path / "c") is None
    assert load_state(tmp_path / "missing") is None


def test_second_live_run_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match="Another run .* is using the output folder"):
            with RunLock(tmp_path):
                pass
    assert not (tmp_path / ".run.lock").exists()


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename}))
    child.kill()
    child.wait()
    with RunLock(tmp_path) as lock:
        assert lock.stale["pid"] == child.pid
