"""Fixtures shared by the plugin services' tests: real Keycloak tokens of the testbed's users
(``mcp``: every tool; ``viewer``: read-only), one per test module."""

from __future__ import annotations

import pytest

from tests.testbed.fixtures_identity import SessionKeycloak


@pytest.fixture(scope="module")
async def mcp_token(keycloak: SessionKeycloak) -> str:
    token: str = await keycloak.auser_token("mcp", "mcp")
    return token


@pytest.fixture(scope="module")
async def viewer_token(keycloak: SessionKeycloak) -> str:
    token: str = await keycloak.auser_token("viewer", "viewer")
    return token
