"""Helpers of the combined check tests (``test_combined.py``, ``test_policy_client.py``): settings
with a policy URL, the check's headers, one combined check call, the token it passes upstream."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway_plugins.token_exchange.config import Settings
from tests.gateway_plugins.policy.running import SERVER
from tests.gateway_plugins.token_exchange.running import CALLER_HEADERS, RunningService

COMBINED = "/ext-authz/combined"


def with_policy_url(settings: Settings, url: str, **extra: Any) -> Settings:
    """``settings`` whose combined check asks the policy service at ``url``."""
    ext_authz = settings.ext_authz.model_copy(update={"policy_url": url, **extra})
    return settings.model_copy(update={"ext_authz": ext_authz})


def combined_headers(
    token: str | None, method: str, *, server: str = SERVER, tool: str | None = None
) -> dict[str, str]:
    headers = {
        "x-mcp-method": method,
        "x-mcp-servername": server,
        "host": "gw.example",
        **CALLER_HEADERS,
    }
    if tool is not None:
        headers["x-mcp-toolname"] = tool
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def post_combined(
    http: aiohttp.ClientSession, te: RunningService, headers: dict[str, str], body: bytes = b""
) -> tuple[int, Any, dict[str, Any]]:
    async with http.post(f"{te.url}{COMBINED}/mcp", headers=headers, data=body) as resp:
        assert resp.content_type == "application/json"
        payload = await resp.json()
        assert isinstance(payload["allow"], bool), payload
        return resp.status, resp.headers, payload


def bearer_of(headers: Any) -> str:
    scheme, _, token = str(headers["authorization"]).partition(" ")
    assert scheme == "Bearer"
    assert token
    return token
