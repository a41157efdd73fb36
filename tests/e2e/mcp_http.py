"""MCP-over-HTTP helpers shared by the end-to-end suites (local gateway and Authorino)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

ACCEPT = "application/json, text/event-stream"


class UserTokens(dict[str, str]):
    """Access tokens by user; the repr never shows them (pytest prints fixtures on failure)."""

    def __repr__(self) -> str:
        return f"UserTokens({sorted(self)}, values redacted)"


@asynccontextmanager
async def session(url: str, token: str, mode: str = "legacy") -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def post(
    url: str, body: Any, token: str | None = None, headers: dict[str, str] | None = None
) -> httpx2.Response:
    all_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(url, content=content, headers=all_headers)


def rpc(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return rpc("tools/call", {"name": tool, "arguments": arguments})


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def listed_names(resp: httpx2.Response) -> list[str]:
    """Sorted tool names of a successful ``tools/list`` answer."""
    assert resp.status_code == 200, resp.text
    return sorted(t["name"] for t in resp.json()["result"]["tools"])


def tampered(token: str) -> str:
    """``token`` with its payload changed (user ``admin``) and the original signature kept."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["preferred_username"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"
