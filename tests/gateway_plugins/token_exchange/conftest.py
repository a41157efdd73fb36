"""Fixtures of the token exchange tests: the service with the testbed's Keycloak, a client, users'
tokens, and for the combined check a policy service with the token exchange that asks it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway_plugins.policy.config import PolicySettings
from tests.gateway_plugins.policy.running import RunningPolicy, policy_settings, running_policy
from tests.gateway_plugins.token_exchange.combined import with_policy_url
from tests.gateway_plugins.token_exchange.running import (
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.fixtures_identity import SessionKeycloak


@pytest.fixture(scope="module")
async def service(
    keycloak: kc.Keycloak, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    settings = service_settings(keycloak, tmp_path_factory.mktemp("te-secrets"))
    async with running_service(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("combined")


@pytest.fixture(scope="module")
def policy_config(keycloak: SessionKeycloak, work: Path) -> PolicySettings:
    """One policy deployment (fixed port and signing key), so a restart is the same service."""
    return policy_settings(keycloak, work / "policy")


@pytest.fixture(scope="module")
async def token_exchange(
    keycloak: SessionKeycloak, work: Path, policy_config: PolicySettings
) -> AsyncIterator[RunningService]:
    base = service_settings(keycloak, work / "te-secrets")
    url = f"http://127.0.0.1:{policy_config.port}/check"
    async with running_service(with_policy_url(base, url, policy_timeout_s=2.0)) as running:
        yield running


@pytest.fixture
async def policy(policy_config: PolicySettings) -> AsyncIterator[RunningPolicy]:
    async with running_policy(policy_config) as running:
        yield running
