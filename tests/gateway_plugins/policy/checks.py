"""Helpers of the policy service tests: ext_authz check headers and bodies, one check call that
asserts the answer's shape, and the tools a token's roles grant."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.gateway_plugins.policy.running import (
    CHANGING_TOOLS,
    READ_ONLY_TOOLS,
    SERVER,
    RunningPolicy,
)
from tests.testbed import keycloak as kc

ALL_TOOLS = READ_ONLY_TOOLS + CHANGING_TOOLS
OTHER = "team-a/other-mcp"


def roles_of(token: str) -> set[str]:
    return set(kc.decode_jwt(token)["resource_access"][SERVER]["roles"])


def check_headers(
    token: str | None, method: str, tool: str | None = None, **extra: str
) -> dict[str, str]:
    headers = {"x-mcp-method": method, "x-mcp-servername": SERVER if tool else "mcpBroker"}
    if tool:
        headers["x-mcp-toolname"] = tool
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers | extra


def call_body(tool: str, arguments: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    ).encode()


async def post_check(
    http: aiohttp.ClientSession, svc: RunningPolicy, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{svc.url}/check/mcp", headers=headers, data=body) as resp:
        payload = await resp.json()
        assert resp.content_type == "application/json"
        assert isinstance(payload["allow"], bool), payload
        assert isinstance(payload["reason"], str), payload
        assert payload["reason"], payload
        return resp.status, payload, resp.headers
