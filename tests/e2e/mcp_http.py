"""MCP-over-HTTP helpers shared by the end-to-end suites (local gateway and Authorino)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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


def catalogue_of(gateway_dir: Path, server: str) -> dict[str, dict[str, Any]]:
    """The backend's real, unfiltered tools/list, saved by the gateway stack when it started."""
    doc = json.loads((gateway_dir / "catalogue.json").read_text())
    return {t["name"]: t for t in doc[server]}


async def tools_per_user(
    url: str, tokens: dict[str, str], mode: str = "legacy"
) -> tuple[set[str], set[str]]:
    """The tool names ``tools/list`` shows users mcp and viewer through the gateway at ``url``."""
    async with session(url, tokens["mcp"], mode) as client:
        mcp_tools = {t.name for t in (await client.list_tools()).tools}
    async with session(url, tokens["viewer"], mode) as client:
        viewer_tools = {t.name for t in (await client.list_tools()).tools}
    return mcp_tools, viewer_tools


def assert_filtered_per_user(
    mcp_tools: set[str], viewer_tools: set[str], catalogue: dict[str, dict[str, Any]]
) -> None:
    """User mcp holds a role for every tool of the backend; viewer only for read-only tools."""
    assert mcp_tools == set(catalogue)
    assert viewer_tools, "viewer must see its read-only tools"
    assert viewer_tools < mcp_tools
    assert {"pods_delete", "pods_exec", "resources_delete"}.isdisjoint(viewer_tools)
    for name in viewer_tools:
        assert catalogue[name]["annotations"]["readOnlyHint"] is True, name
