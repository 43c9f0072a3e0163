"""One run per output folder: a lock file that a live run holds and a killed run leaves stale.

The lock records pid, host and start time. A second run on the same folder while the first is
alive is refused with a clear message; a lock left by a run that died (kill -9, power loss) is
recognised as stale (its pid is gone on this host) and taken over, so the new run resumes.
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

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder and _alive(holder):
                    raise UserError(
                        f"Another run (pid {holder['pid']} on {holder['host']}, started "
                        f"{holder.get('started', '?')}) is using the output folder "
                        f"'{self.path.parent}'. Wait for it to finish, stop it, or pass a "
                        f"different --out.") from None
                self.stale = holder or {}
                self.path.unlink(missing_ok=True)  # left by a run that died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
            return self
        raise UserError(f"Could not take the lock {self.path}; remove it if no run is active.")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None


def _alive(holder: dict) -> bool:
    """Is the lock's process still running? A lock from another host is assumed alive."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True
