"""One run per output folder: a lock file that a live run holds and a killed run leaves stale.

The lock records pid, host, start date, and the identity of the process: the boot id
(/proc/sys/kernel/random/boot_id) and the process's start time in clock ticks since boot
(/proc/<pid>/stat, field 22). A second run on the same folder while the first is alive is refused
with a message naming the lock file. A lock left by a run that died (kill -9, power loss, a reboot)
is recognised as stale and taken over, so the new run resumes. On the lock's host it is stale when
  - it was written in another boot (the boot id differs): no process of that boot is running, or
  - its pid is gone, or is alive but started at another time (the pid now belongs to another process).
Locks written before boot id and start time were recorded keep the pid rule alone. A lock from
another host (a shared file system) is assumed alive: its pid cannot be checked from here.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from bench.errors import UserError


class RunLock:
    """Context manager holding <out>/.run.lock for the duration of a run."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".run.lock"
        self.stale: dict | None = None
        self.release_error: OSError | None = None  # set when the lock could not be removed on exit

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder and _alive(holder):
                    raise UserError(
                        f"Another run (pid {holder.get('pid')} on {holder.get('host')}, started "
                        f"{holder.get('started', '?')}) is using the output folder "
                        f"'{self.path.parent}': its lock file '{self.path}' is held. Wait for it to "
                        f"finish, stop it, or pass a different --out. If no run is active (for example "
                        f"it ran on another host that is gone), remove '{self.path}' and run again.") from None
                self.stale = holder or {}
                self.path.unlink(missing_ok=True)  # left by a run that died: take it over
                continue
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "boot_id": boot_id(), "pid_start": process_start(os.getpid())}
            with os.fdopen(fd, "w") as f:
                json.dump({k: v for k, v in me.items() if v is not None}, f)
            return self
        raise UserError(f"Could not take the lock {self.path}; remove it if no run is active.")

    def __exit__(self, *exc) -> None:
        """Remove the lock; a folder that became read-only keeps it, and release_error says why."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:
            self.release_error = e

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None


def boot_id() -> str | None:
    """This boot's random id (Linux), or None where it cannot be read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Is the lock's process still running? A lock from another host is assumed alive."""
    if holder.get("host") != socket.gethostname():
        return True
    if holder.get("boot_id") and boot_id() and holder["boot_id"] != boot_id():
        return False  # written before a reboot
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    started = process_start(int(holder["pid"]))
    if holder.get("pid_start") is not None and started is not None and started != holder["pid_start"]:
        return False  # the pid was reused by a process that started later
    return True
