"""Atomic writes and the run environment record (versions, commit, device)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "torch-fidelity", "scikit-learn",
            "numpy", "pandas", "matplotlib", "safetensors")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def written_under(e: OSError, *folders: Path) -> bool:
    """Did this OSError come from a path inside one of the folders (the output folder going read-only or
    full), rather than from reading an input?"""
    roots = [Path(f).resolve() for f in folders]
    for name in (e.filename, e.filename2):
        if name is None:
            continue
        path = Path(os.fsdecode(name)).resolve()
        if any(path == r or r in path.parents for r in roots):
            return True
    return False


def atomic_write_json(path: Path, obj) -> None:
    """JSON with sorted keys; NaN/Inf are refused (allow_nan=False) so they never pass as results."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_write_png(path: Path, image) -> None:
    """A uint8 image array (H, W) or (H, W, 1|3) as PNG, atomically (matplotlib, no torch needed)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    plt.imsave(buf, arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255, format="png")
    atomic_write_bytes(path, buf.getvalue())


def git_commit() -> str:
    """The commit of the code that ran, with '+dirty' when the tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def environment() -> dict:
    """Versions, commit, device and date for provenance."""
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
        f"{torch.get_num_threads()} torch threads)"
    return {"git_commit": git_commit(), "python": platform.python_version(), "packages": versions,
            "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
