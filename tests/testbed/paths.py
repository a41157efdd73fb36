"""Where the testbed keeps things.

* The component cache (built binaries, downloaded distributions) lives outside the clone so a fresh
  clone in CI reuses it: ``$KMG_CACHE_DIR`` or ``$XDG_CACHE_HOME/kube-mcp-gateway`` (default
  ``~/.cache/kube-mcp-gateway``).
* Run state (logs, certificates, data directories) lives in the clone under ``.testbed/`` (ignored),
  one folder per run, so logs survive a failed test for debugging.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_WRAPPERS = Path(__file__).resolve().parent / "go"


def cache_dir() -> Path:
    """The component cache root (created on demand)."""
    env = os.environ.get("KMG_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "kube-mcp-gateway"
    root.mkdir(parents=True, exist_ok=True)
    return root


def bin_dir() -> Path:
    """Built Go binaries, one folder per component version: ``<cache>/bin/<name>-<version>/``."""
    return cache_dir() / "bin"


def run_root() -> Path:
    """Ignored folder in the clone holding every run's logs and state."""
    root = Path(os.environ.get("KMG_RUN_DIR", REPO_ROOT / ".testbed"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def new_run_dir(label: str) -> Path:
    """A fresh folder for one run; the newest is linked as ``.testbed/<label>-latest``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = run_root()
    path = base / f"{label}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    latest = base / f"{label}-latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(path.name)
    except OSError:
        pass
    return path
