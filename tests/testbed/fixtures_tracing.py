"""Session fixture ``trace_collector``: the real Jaeger v2 (``tests/testbed/jaeger.py``) that the
session's API servers (``cluster_a``, ``cluster_b``), our services behind the local gateway and its
Envoy export their spans to; tests read traces back through its query API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.jaeger import Jaeger


@pytest.fixture(scope="session")
def trace_collector(testbed_run_dir: Path) -> Iterator[Jaeger]:
    jaeger = Jaeger(testbed_run_dir).start()
    try:
        yield jaeger
    finally:
        jaeger.stop()
