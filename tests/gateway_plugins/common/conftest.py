"""Fixtures for the shared plugin scaffolding: a real local issuer and one client session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway_plugins.common.http_client import make_client_session
from tests.gateway_plugins.common.issuer import LocalIssuer


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer().start()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(timeout_s=2.0)
    yield client
    await client.close()
