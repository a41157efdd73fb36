"""``DirectJsonResponder`` answers exactly what the SDK's own stateless transport answers.

Every request is sent to two real backends on the same clusters: the default one (stateless,
JSON responses, ``single_exchange`` on) and one with ``single_exchange: false``, where every
request goes through the SDK's per-request transport. Status, content type and body must be the
same, byte for byte where the body is the answer (an answer that names the time, such as a
``resourceVersion`` being written, does not occur: the objects read here do not change).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

from mcp_backend.app import create_backend
from mcp_backend.config import Settings
from mcp_backend.transport.auth import RequireBearer
from mcp_backend.transport.direct_json_response import DirectJsonResponder
from tests.mcp_backend.conftest import NS, RunningBackend, Tokens
from tests.reliability.test_hostile_jsonrpc import PROTOCOL_ATTACKS

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _call(name: str, arguments: Any, rid: Any = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


# Requests the single exchange answers itself.
ANSWERED: dict[str, dict[str, Any]] = {
    # Tables carry an AGE column that may tick between the two requests: this one has no rows.
    "tools/call, a table": _call(
        "pods_list_in_namespace", {"namespace": NS, "labelSelector": "app=none-such"}
    ),
    "tools/call, YAML": _call(
        "resources_get", {"apiVersion": "v1", "kind": "Namespace", "name": NS}
    ),
    "tools/call, string id": _call("configuration_view", {}, rid="call-7"),
    "tools/call, refused by RBAC (isError)": _call("nodes_top", {}),
    "tools/call, not found, non-ASCII name": _call(
        "resources_get",
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "zürich-∂", "namespace": NS},
    ),
    "tools/call, unknown tool": _call("no_such_tool", {}),
    "tools/call, no arguments": {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "configuration_contexts_list"},
    },
    "tools/call, arguments not an object": _call("pods_list", [1, 2]),
    "tools/call, no params": {"jsonrpc": "2.0", "id": 4, "method": "tools/call"},
    "tools/list": {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
    "prompts/list": {"jsonrpc": "2.0", "id": 6, "method": "prompts/list", "params": {}},
    "prompts/get, unknown": {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "prompts/get",
        "params": {"name": "nope"},
    },
    "ping": {"jsonrpc": "2.0", "id": 8, "method": "ping"},
    "ping, large id": {"jsonrpc": "2.0", "id": 2**62, "method": "ping"},
}

# Requests it leaves to the SDK: (body, extra headers).
DELEGATED: dict[str, tuple[bytes, dict[str, str]]] = {
    "initialize": (
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
        ).encode(),
        {},
    ),
    "notification": (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', {}),
    "logging/setLevel": (
        b'{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"debug"}}',
        {},
    ),
    "boolean id": (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', {}),
    "extra member": (b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', {}),
    "unsupported protocol version": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        {"MCP-Protocol-Version": "1999-01-01"},
    ),
    "session id sent to a stateless server": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        {"Mcp-Session-Id": "abc"},
    ),
    "content type not JSON": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        {"Content-Type": "text/plain"},
    ),
    "content type JSON-ish": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        {"Content-Type": "application/jsonx"},
    ),
    "accepts no JSON": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        {"Accept": "text/event-stream"},
    ),
    "body over 4 MiB": (
        json.dumps(_call("pods_list", {"labelSelector": "a" * (4 * 1024 * 1024)})).encode(),
        {},
    ),
}


def _answered(running: RunningBackend) -> float:
    """How many POSTs the backend's single exchange answered itself (its Prometheus counter)."""
    value = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_mcp_requests_total", {"path": "single_exchange"}
    )
    return value or 0.0


async def _both(
    backend: RunningBackend,
    transport_only: RunningBackend,
    body: bytes,
    token: str,
    headers: dict[str, str] | None = None,
) -> tuple[httpx2.Response, httpx2.Response]:
    sent = {**HEADERS, "Authorization": f"Bearer {token}", **(headers or {})}
    async with httpx2.AsyncClient(timeout=60) as http:
        fast = await http.post(backend.url, content=body, headers=sent)
        sdk = await http.post(transport_only.url, content=body, headers=sent)
    return fast, sdk


@pytest.fixture
async def transport_only(backend_factory: Any) -> RunningBackend:
    running: RunningBackend = await backend_factory(single_exchange=False)
    return running


@pytest.mark.parametrize("case", sorted(ANSWERED))
async def test_answers_are_the_sdk_transports_byte_for_byte(
    backend: RunningBackend, transport_only: RunningBackend, tokens: Tokens, case: str
) -> None:
    body = json.dumps(ANSWERED[case], ensure_ascii=False).encode()
    before = _answered(backend)
    fast, sdk = await _both(backend, transport_only, body, tokens.viewer)
    assert _answered(backend) == before + 1  # answered by the single exchange, not handed on
    assert _answered(transport_only) == 0
    assert fast.status_code == sdk.status_code == 200, (fast.text, sdk.text)
    assert fast.headers["content-type"] == sdk.headers["content-type"] == "application/json"
    assert fast.content == sdk.content
    answer = fast.json()
    assert answer["id"] == ANSWERED[case]["id"]
    assert ("result" in answer) != ("error" in answer)


async def test_protocol_versions_of_the_handshake_era(
    backend: RunningBackend, transport_only: RunningBackend, tokens: Tokens
) -> None:
    body = json.dumps(_call("configuration_contexts_list", {})).encode()
    for version in ("2025-03-26", "2025-06-18", "2025-11-25"):
        fast, sdk = await _both(
            backend, transport_only, body, tokens.viewer, {"MCP-Protocol-Version": version}
        )
        assert fast.status_code == sdk.status_code == 200, (version, fast.text)
        assert fast.content == sdk.content, version
        assert "cluster-a" in fast.json()["result"]["content"][0]["text"]


@pytest.mark.parametrize("case", sorted(DELEGATED))
async def test_everything_else_is_the_sdks_own_answer(
    backend: RunningBackend, transport_only: RunningBackend, tokens: Tokens, case: str
) -> None:
    body, headers = DELEGATED[case]
    before = _answered(backend)
    fast, sdk = await _both(backend, transport_only, body, tokens.viewer, headers)
    assert _answered(backend) == before  # handed to the SDK's transport
    assert fast.status_code == sdk.status_code, (fast.text[:300], sdk.text[:300])
    assert fast.headers.get("content-type") == sdk.headers.get("content-type")
    assert fast.content == sdk.content


@pytest.mark.parametrize("attack", sorted(PROTOCOL_ATTACKS))
async def test_hostile_requests_get_the_sdks_answer(
    backend: RunningBackend, transport_only: RunningBackend, tokens: Tokens, attack: str
) -> None:
    """Answered here (a well-formed envelope with odd params) or handed on: the same bytes."""
    body, _ = PROTOCOL_ATTACKS[attack]
    fast, sdk = await _both(backend, transport_only, body, tokens.viewer)
    assert fast.status_code == sdk.status_code, (fast.text[:300], sdk.text[:300])
    assert fast.headers.get("content-type") == sdk.headers.get("content-type")
    assert fast.content == sdk.content


async def test_host_and_origin_checks_apply(backend_factory: Any, tokens: Tokens) -> None:
    checked = await backend_factory(allowed_hosts=["mcp.example.com"])
    checked_sdk = await backend_factory(allowed_hosts=["mcp.example.com"], single_exchange=False)
    body = json.dumps(_call("configuration_contexts_list", {})).encode()
    statuses = []
    for headers in (
        {},
        {"Host": "mcp.example.com"},
        {"Host": "evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:6274"},
    ):
        fast, sdk = await _both(checked, checked_sdk, body, tokens.viewer, headers)
        assert fast.status_code == sdk.status_code, headers
        assert fast.content == sdk.content, headers
        statuses.append(fast.status_code)
    assert statuses == [200, 200, 421, 403, 200]


def test_used_only_where_one_request_gets_one_json_answer(tokens: Tokens) -> None:
    """The front is in place with the defaults, and not with sessions or SSE answers (where the
    transport's streams carry something) or when switched off."""

    def front(**overrides: Any) -> object:
        settings = Settings.model_validate(
            {"clusters": [{"name": "c", "server": "https://127.0.0.1:1", "default": True}]}
            | overrides
        )
        app = create_backend(settings).app
        endpoint = next(r for r in app.routes if getattr(r, "path", "") == "/mcp")
        wrapper = endpoint.endpoint  # type: ignore[attr-defined]
        assert isinstance(wrapper, RequireBearer)
        return wrapper.app

    assert isinstance(front(), DirectJsonResponder)
    for overrides in ({"stateless": False}, {"json_response": False}, {"single_exchange": False}):
        assert isinstance(front(**overrides), StreamableHTTPASGIApp), overrides
