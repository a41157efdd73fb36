"""Fixtures of the policy service tests: an OPA server of their own (empty: the service loads
the policy into it, which is what lets a test restart OPA and watch the service recover),
real Keycloak tokens, and the running service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    RunningPolicy,
    policy_settings,
    running_policy,
)
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


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=CALLER_HEADERS
    ) as session:
        yield session


@pytest.fixture(scope="module")
async def service(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    """The default deployment: embedded engine, the repo's policies and default data."""
    async with running_policy(policy_settings(keycloak, policy_work / "embedded")) as running:
        yield running
