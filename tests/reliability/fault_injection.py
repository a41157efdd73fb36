"""Faults the tests inject into real processes: a kube-apiserver frozen with SIGSTOP (a hung
server: it accepts TCP connections and never answers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

from tests.testbed.cluster import Cluster


@contextlib.contextmanager
def frozen(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP the cluster's kube-apiserver (a hung server: connects, never answers)."""
    proc = cluster.processes["kube-apiserver"].proc
    assert proc is not None
    assert proc.poll() is None, "kube-apiserver is not running"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while _state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(proc.pid) == "T", f"kube-apiserver not stopped: {_state(proc.pid)}"
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]
