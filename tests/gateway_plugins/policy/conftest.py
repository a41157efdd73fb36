"""Fixtures of the policy service tests: an OPA server of their own (empty: the service loads
the policy into it, which is what lets a test restart OPA and watch the service recover),
real Keycloak tokens, and the running service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.opa_server import OpaServer


@pytest.fixture(scope="session")
def policy_opa(testbed_run_dir: Path) -> Iterator[OpaServer]:
    """A real ``opa run --server`` with nothing loaded; stop()/start() keep its port."""
    server = OpaServer(testbed_run_dir, load=[], name="opa-policy").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def policy_work(testbed_run_dir: Path) -> Path:
    path = testbed_run_dir / "policy"
    path.mkdir(exist_ok=True)
    return path
