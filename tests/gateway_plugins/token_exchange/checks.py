"""Helpers of the token exchange tests against Keycloak: one ``/check`` call, one ``/token``
facade call, the token a check issued, a user's token, and Keycloak's admin REST API."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    RunningService,
)
from tests.testbed import keycloak as kc

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


async def post_check(
    http: aiohttp.ClientSession, service: RunningService, token: str | None, target: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {
        "x-mcp-servername": target,
        "x-mcp-method": "tools/call",
        "host": "gw.example",
        **CALLER_HEADERS,
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with http.post(f"{service.url}/check/mcp", headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def post_token(
    http: aiohttp.ClientSession,
    service: RunningService,
    form: dict[str, str],
    *,
    client: tuple[str, str] = (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
) -> tuple[int, dict[str, Any]]:
    auth = aiohttp.BasicAuth(*client)
    async with http.post(f"{service.url}/token", data=form, auth=auth) as resp:
        return resp.status, await resp.json()


def issued_token(headers: dict[str, str]) -> str:
    value = headers["Authorization"]
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


async def fetch_user_token(keycloak: kc.Keycloak, username: str, password: str, **kw: Any) -> str:
    return await asyncio.to_thread(keycloak.user_token, username, password, **kw)


def keycloak_admin(keycloak: kc.Keycloak, method: str, path: str, body: Any = None) -> Any:
    """``method /admin/realms/<path>`` as the testbed's Keycloak admin."""
    return keycloak.admin_request(method, f"realms/{path}", body)
