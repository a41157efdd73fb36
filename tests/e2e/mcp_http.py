"""MCP-over-HTTP helpers shared by the end-to-end suites (local gateway and Authorino).

Through the real MCP Gateway a ``tools/call`` or ``prompts/get`` needs a gateway session: the
broker's ``Mcp-Session-Id`` from an ``initialize`` (:func:`open_session`); without one the router
answers 400 before any auth step.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-11-25"


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
    url: str,
    body: Any,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    session_id: str | None = None,
) -> httpx2.Response:
    all_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    if session_id is not None:
        all_headers["Mcp-Session-Id"] = session_id
        all_headers.setdefault("MCP-Protocol-Version", PROTOCOL)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(url, content=content, headers=all_headers)


async def open_session(url: str, token: str, headers: dict[str, str] | None = None) -> str:
    """A gateway session (``initialize`` + ``notifications/initialized``); its Mcp-Session-Id."""
    init = rpc(
        "initialize",
        {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "kmg-e2e", "version": "1"},
        },
    )
    resp = await post(url, init, token, headers)
    assert resp.status_code == 200, resp.text
    session_id = resp.headers.get("mcp-session-id")
    assert session_id, f"no Mcp-Session-Id in the initialize answer: {dict(resp.headers)}"
    done = await post(
        url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, headers, session_id
    )
    assert done.status_code in (200, 202), done.text
    return session_id


def rpc(method: str, params: dict[str, Any] | None = None, id_: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return rpc("tools/call", {"name": tool, "arguments": arguments})


def messages(resp: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer, JSON or Server-Sent Events."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        found = re.findall(r"^data: (.*)$", resp.text, flags=re.MULTILINE)
        return [json.loads(line) for line in found]
    return [resp.json()]


def result_of(resp: httpx2.Response) -> dict[str, Any]:
    """The ``result`` of a successful JSON-RPC answer (JSON or SSE)."""
    assert resp.status_code == 200, resp.text
    for message in messages(resp):
        if "result" in message:
            found: dict[str, Any] = message["result"]
            return found
    raise AssertionError(f"no JSON-RPC result in: {resp.text[:500]}")


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def listed_names(resp: httpx2.Response) -> list[str]:
    """Sorted tool names of a successful ``tools/list`` answer."""
    return sorted(t["name"] for t in result_of(resp)["tools"])


def tampered(token: str) -> str:
    """``token`` with its payload changed (user ``admin``) and the original signature kept."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["preferred_username"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def catalogue_of(gateway_dir: Path, server: str) -> dict[str, dict[str, Any]]:
    """A backend's real, unfiltered tools/list, saved by the gateway stack when it started."""
    doc = json.loads((gateway_dir / "catalogue.json").read_text())
    return {t["name"]: t for t in doc[server]}


def catalogues_by_prefix(gateway: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Every server's catalogue keyed by its tool prefix (``a_``, ``b_``)."""
    return {s.prefix: catalogue_of(gateway.gateway_dir, s.name) for s in gateway.servers}


async def tools_per_user(
    url: str, tokens: Mapping[str, str], mode: str = "legacy"
) -> tuple[set[str], set[str]]:
    """The tool names ``tools/list`` shows users mcp and viewer through the gateway at ``url``."""
    async with session(url, tokens["mcp"], mode) as client:
        mcp_tools = {t.name for t in (await client.list_tools()).tools}
    async with session(url, tokens["viewer"], mode) as client:
        viewer_tools = {t.name for t in (await client.list_tools()).tools}
    return mcp_tools, viewer_tools


def assert_filtered_per_user(
    mcp_tools: set[str],
    viewer_tools: set[str],
    catalogues: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> None:
    """The aggregated list of every server (prefix -> its catalogue): user mcp holds a role for
    every tool of each server, viewer only for the read-only tools."""
    everything = {prefix + name for prefix, tools in catalogues.items() for name in tools}
    read_only = {
        prefix + name
        for prefix, tools in catalogues.items()
        for name, tool in tools.items()
        if tool["annotations"]["readOnlyHint"] is True
    }
    assert mcp_tools == everything
    assert viewer_tools == read_only
    assert viewer_tools < mcp_tools
    for prefix in catalogues:
        assert f"{prefix}pods_delete" in mcp_tools
        assert {f"{prefix}pods_delete", f"{prefix}pods_exec"}.isdisjoint(viewer_tools)


def metric_total(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter at ``url`` (``/metrics``) over the series matching ``labels``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
