"""The bearer token of every request: 401 with RFC 9728 pointers without one, both headers,
opaque tokens passed to the cluster, the token read again on every request of a session."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of


async def test_missing_token_gets_401_with_resource_metadata(backend: Any) -> None:
    async with httpx2.AsyncClient() as http:
        answer = await http.post(
            backend.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert answer.status_code == 401
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert "resource_metadata=" in challenge
        url = challenge.split('resource_metadata="', 1)[1].rstrip('"')
        assert url == f"{backend.base}/.well-known/oauth-protected-resource/mcp"
        meta = (await http.get(url)).json()
        assert meta["resource"] == backend.url
        assert "authorization_servers" in meta
        assert (await http.get(f"{backend.base}/healthz")).status_code == 200
        ready = await http.get(f"{backend.base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["clusters"] == ["cluster-a", "cluster-b"]
        metrics = (await http.get(f"{backend.base}/metrics")).text
    assert "kmg_backend_unauthenticated_requests_total" in metrics
    assert "kmg_backend_tool_calls_total" in metrics


async def test_mcp_client_without_token_cannot_connect(backend: Any) -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the SDK wraps it in groups
        async with mcp_client(backend.url, None) as client:
            await client.list_tools()
    leaves = _leaves(info.value)
    assert leaves, info.value
    assert all(isinstance(e, MCPError) for e in leaves), leaves


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def test_kubernetes_authorization_header_is_accepted(
    backend: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with mcp_client(
        backend.url, None, headers={"kubernetes-authorization": f"Bearer {tokens.viewer}"}
    ) as c:
        result = await c.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert not result.is_error, text_of(result)


async def test_opaque_token_passes_through_and_the_cluster_decides(connect: Any) -> None:
    async with connect("opaque-not-a-jwt-token") as client:
        result = await client.call_tool("pods_list", {})
    text = text_of(result)
    assert result.is_error
    assert "401" in text
    assert "cluster 'cluster-a'" in text
    assert "opaque-not-a-jwt-token" not in text


async def test_token_is_read_on_every_request_not_cached_per_session(
    backend_factory: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """Stateful sessions: the session's second request carries a different token."""
    running = await backend_factory(stateless=False, json_response=False)
    current = {"token": tokens.viewer}

    async def auth(request: httpx2.Request) -> httpx2.Request:
        request.headers["Authorization"] = f"Bearer {current['token']}"
        return request

    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=60, event_hooks={"request": [auth]}) as http,
        Client(streamable_http_client(running.url, http_client=http), mode="legacy") as client,
    ):
        ok = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
        current["token"] = tokens.nobody
        refused = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert not ok.is_error, text_of(ok)
    assert refused.is_error
    assert "mcpb-nobody" in text_of(refused)


async def test_protected_resource_metadata_uses_the_configured_values(
    backend_factory: Any,
) -> None:
    running = await backend_factory(
        resource_url="https://mcp.example.com/mcp",
        authorization_servers=["https://idp.example.com/realms/mcp"],
    )
    async with httpx2.AsyncClient() as http:
        refused = await http.post(running.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        meta = (await http.get(f"{running.base}/.well-known/oauth-protected-resource/mcp")).json()
    assert refused.status_code == 401
    assert (
        'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
        in refused.headers["www-authenticate"]
    )
    assert meta["resource"] == "https://mcp.example.com/mcp"
    assert meta["authorization_servers"] == ["https://idp.example.com/realms/mcp"]
