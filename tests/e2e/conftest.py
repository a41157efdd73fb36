"""Fixtures of the end-to-end tests: the demo users' Keycloak tokens for the local gateway."""

from __future__ import annotations

import pytest

from tests.e2e.mcp_http import UserTokens
from tests.testbed.mcp_gateway.stack import LocalGateway


@pytest.fixture(scope="module")
async def tokens(local_gateway: LocalGateway) -> UserTokens:
    """Tokens of ``mcp`` (every tool) and ``viewer`` (read-only tools) for the local gateway's
    realm; test_authorino.py has its own (the Authorino stack's users)."""
    return UserTokens({user: local_gateway.user_token(user) for user in ("mcp", "viewer")})
