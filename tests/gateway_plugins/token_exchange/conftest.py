"""Fixtures of the token exchange tests: the service with the testbed's Keycloak, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.gateway_plugins.token_exchange.running import (
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc


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
