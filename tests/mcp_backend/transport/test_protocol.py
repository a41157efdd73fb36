"""The MCP surface: handshake in both protocol eras, tools/list matching the reference catalogue,
prompts, ping, logging/setLevel, JSON-RPC errors (the bearer token, 401 with RFC 9728 pointers,
health and metrics: ``test_auth.py``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of

# name -> (parameters, required, (readOnly, destructive, idempotent, openWorld)), from
# /work/shared/reference/tool-catalogue.md (the reference server's published schemas).
CATALOGUE: dict[str, tuple[set[str], set[str], tuple[bool, bool, bool, bool]]] = {
    "configuration_contexts_list": (set(), set(), (True, False, True, False)),
    "configuration_view": ({"minified"}, set(), (True, False, False, True)),
    "events_list": ({"namespace", "fieldSelector"}, set(), (True, False, False, True)),
    "namespaces_list": ({"fieldSelector"}, set(), (True, False, False, True)),
    "nodes_log": ({"name", "query", "tailLines"}, {"name", "query"}, (True, False, False, True)),
    "nodes_stats_summary": ({"name"}, {"name"}, (True, False, False, True)),
    "nodes_top": ({"name", "label_selector"}, set(), (True, False, True, True)),
    "pods_list": ({"labelSelector", "fieldSelector"}, set(), (True, False, False, True)),
    "pods_list_in_namespace": (
        {"namespace", "labelSelector", "fieldSelector"},
        {"namespace"},
        (True, False, False, True),
    ),
    "pods_get": ({"name", "namespace"}, {"name"}, (True, False, False, True)),
    "pods_delete": ({"name", "namespace"}, {"name"}, (False, True, True, True)),
    "pods_top": (
        {"all_namespaces", "namespace", "name", "label_selector"},
        set(),
        (True, False, True, True),
    ),
    "pods_exec": (
        {"name", "command", "namespace", "container"},
        {"name", "command"},
        (False, True, False, True),
    ),
    "pods_log": (
        {"name", "namespace", "container", "previous", "tail"},
        {"name"},
        (True, False, False, True),
    ),
    "pods_run": ({"image", "name", "namespace", "port"}, {"image"}, (False, False, False, True)),
    "resources_list": (
        {"apiVersion", "kind", "namespace", "labelSelector", "fieldSelector"},
        {"apiVersion", "kind"},
        (True, False, False, True),
    ),
    "resources_get": (
        {"apiVersion", "kind", "name", "namespace"},
        {"apiVersion", "kind", "name"},
        (True, False, False, True),
    ),
    "resources_create_or_update": ({"resource"}, {"resource"}, (False, True, True, True)),
    "resources_delete": (
        {"apiVersion", "kind", "name", "namespace", "gracePeriodSeconds"},
        {"apiVersion", "kind", "name"},
        (False, True, True, True),
    ),
    "resources_scale": (
        {"apiVersion", "kind", "name", "namespace", "scale"},
        {"apiVersion", "kind", "name"},
        (False, True, True, True),
    ),
    "helm_install": (
        {"chart", "name", "namespace", "values"},
        {"chart"},
        (False, False, False, True),
    ),
    "helm_list": ({"namespace", "all_namespaces"}, set(), (True, False, False, True)),
    "helm_uninstall": ({"name", "namespace"}, {"name"}, (False, True, True, True)),
}


DEFAULTS = {
    ("configuration_view", "minified"): True,
    ("nodes_log", "tailLines"): 100,
    ("pods_top", "all_namespaces"): True,
    ("pods_log", "tail"): 100,
}


OUR_EXTRAS = {"context", "limit", "continue", "output", "labelSelector"}


# Parameters we add to a reference tool (optional, so a reference client is unaffected).
TOOL_EXTRAS = {
    "pods_log": {"since", "sinceTime", "grep", "grepRegex"},
    "resources_create_or_update": {"dryRun"},
}


# Our day-2 tools beyond the reference catalogue: the same conventions.
OURS: dict[str, tuple[set[str], set[str], tuple[bool, bool, bool, bool]]] = {
    "workload_diagnose": (
        {"kind", "name", "namespace", "log_lines"},
        {"kind", "name"},
        (True, False, False, True),
    ),
    "helm_status": ({"name", "namespace", "revision"}, {"name"}, (True, False, False, True)),
    "helm_history": ({"name", "namespace", "max"}, {"name"}, (True, False, False, True)),
    "helm_upgrade": (
        {"name", "chart", "values", "reuse_values", "namespace"},
        {"name", "chart"},
        (False, True, False, True),
    ),
    "helm_rollback": ({"name", "revision", "namespace"}, {"name"}, (False, True, False, True)),
    "rollout_status": ({"kind", "name", "namespace"}, {"kind", "name"}, (True, False, False, True)),
    "rollout_history": (
        {"kind", "name", "namespace"},
        {"kind", "name"},
        (True, False, False, True),
    ),
    "rollout_restart": (
        {"kind", "name", "namespace"},
        {"kind", "name"},
        (False, True, False, True),
    ),
    "rollout_undo": (
        {"kind", "name", "namespace", "revision"},
        {"kind", "name"},
        (False, True, False, True),
    ),
    "can_i": ({"verb", "resource", "name", "namespace"}, set(), (True, False, True, True)),
}


GOLDEN = Path(__file__).parents[1] / "golden" / "tools_list.json"


async def test_tools_list_matches_the_golden_snapshot(backend: Any, tokens: Tokens) -> None:
    """The whole tools/list answer; KMG_UPDATE_GOLDEN=1 regenerates it after a deliberate change."""
    async with mcp_client(backend.url, tokens.nobody) as client:
        tools = (await client.list_tools()).tools
    current = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
    if os.environ.get("KMG_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert current == golden, "tools/list changed: review, then regenerate with KMG_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_matches_the_reference_catalogue(
    backend: Any, tokens: Tokens, mode: str
) -> None:
    async with mcp_client(backend.url, tokens.nobody, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(CATALOGUE) <= set(tools)
    assert set(tools) - set(CATALOGUE) == set(OURS)
    for name, (params, required, (ro, de, idem, ow)) in {**CATALOGUE, **OURS}.items():
        tool = tools[name]
        props = tool.input_schema["properties"]
        assert params <= set(props), name
        assert set(props) - params <= OUR_EXTRAS | TOOL_EXTRAS.get(name, set()), name
        assert set(tool.input_schema.get("required", [])) == required, name
        a = tool.annotations
        assert a is not None
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint) == (
            ro,
            de,
            idem,
            ow,
        ), name
        assert "access_token" not in props
        cluster_aware = not name.startswith("configuration_")
        assert ("context" in props) == cluster_aware, name
    for (name, param), default in DEFAULTS.items():
        assert tools[name].input_schema["properties"][param]["default"] == default
    assert tools["pods_exec"].input_schema["properties"]["command"]["type"] == "array"


async def test_prompts_ping_and_logging(backend: Any, tokens: Tokens) -> None:
    async with mcp_client(backend.url, tokens.nobody) as client:
        assert client.server_capabilities.tools is not None
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["cluster-health-check"]
        assert [a.name for a in prompts[0].arguments or []] == ["namespace", "check_events"]
        got = await client.get_prompt(
            "cluster-health-check", {"namespace": NS, "check_events": "false"}
        )
        text = got.messages[0].content.text  # type: ignore[union-attr]
        assert "workload_diagnose" in text
        assert NS in text
        assert "events_list" not in text
        with pytest.raises(MCPError, match="check_events"):
            await client.get_prompt("cluster-health-check", {"check_events": "maybe"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ping/setLevel are deprecated in the 2026 protocol
            await client.send_ping()
            await client.set_logging_level("debug")
    assert backend.backend.handlers.client_log_level == "debug"


async def test_unknown_tool_is_a_protocol_error(connect: Any, tokens: Tokens) -> None:
    async with connect(tokens.nobody) as client:
        with pytest.raises(MCPError, match="Unknown tool: 'no_such_tool'"):
            await client.call_tool("no_such_tool", {})


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_tool_calls_on_the_2026_protocol(backend: Any, tokens: Tokens, mode: str) -> None:
    """A client on the per-request protocol (no handshake) calls tools with arguments: the SDK
    checks its ``Mcp-Param-*`` headers against our input schemas (``tool_input_schema``)."""
    registry = backend.backend.metrics.registry
    sample = ("kmg_backend_mcp_requests_total", {"path": "single_exchange"})
    answered_before = registry.get_sample_value(*sample)
    async with mcp_client(backend.url, tokens.admin, mode=mode) as client:
        got = await client.call_tool(
            "resources_get", {"apiVersion": "v1", "kind": "Namespace", "name": NS}
        )
        bad = await client.call_tool("resources_get", {"apiVersion": "v1", "kind": "Namespace"})
        with pytest.raises(MCPError, match="Unknown tool"):
            await client.call_tool("no_such_tool", {"x": 1})
    assert not got.is_error, text_of(got)
    assert f"name: {NS}" in text_of(got)
    assert bad.is_error
    assert "name" in text_of(bad)
    schema = backend.backend.handlers.tool_input_schema("resources_get")
    assert schema is not None
    assert schema["required"] == ["apiVersion", "kind", "name"]
    assert backend.backend.handlers.tool_input_schema("no_such_tool") is None
    # Served by the SDK's 2026 entry, not by the handshake-era single exchange.
    assert registry.get_sample_value(*sample) == answered_before


_MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def _modern_post(
    url: str, token: str, method: str, params: dict[str, Any]
) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": method,
        "params": {**params, "_meta": _MODERN_META},
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body, headers=headers)


async def test_subscriptions_listen_opens_a_stream_that_starts_with_its_acknowledgement(
    backend: Any, tokens: Tokens
) -> None:
    """A 2026 client (the MCP Gateway broker's go-sdk among them) opens subscriptions/listen
    right after server/discover and drops the connection when it is refused (the SDK answered
    404 Method not found before the backend served it)."""
    body = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": True}, "_meta": _MODERN_META},
    }
    headers = {
        "Authorization": f"Bearer {tokens.admin}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "subscriptions/listen",
    }
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", backend.url, json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                first = json.loads(line[len("data: ") :])
                break
    assert first["method"] == "notifications/subscriptions/acknowledged"
    assert first["params"]["notifications"] == {"toolsListChanged": True}


async def test_modern_protocol_off_refuses_2026_requests_and_clients_fall_back(
    backend_factory: Any, tokens: Tokens
) -> None:
    """Behind the MCP Gateway v0.9.0 broker (it shows a server that negotiates 2026 to 2026
    clients only), ``modern_protocol: false`` makes every client use the handshake."""
    running = await backend_factory(modern_protocol=False)
    for method in ("server/discover", "tools/list"):
        resp = await _modern_post(running.url, tokens.admin, method, {})
        assert resp.status_code == 400, resp.text
        error = resp.json()
        assert error["id"] == 41
        assert error["error"]["code"] == -32022  # unsupported protocol version
        assert error["error"]["data"]["requested"] == "2026-07-28"
        assert "2025-11-25" in error["error"]["data"]["supported"]
        assert "2026-07-28" not in error["error"]["data"]["supported"]
    # A client in "auto" mode probes server/discover, gets the refusal, and falls back.
    async with mcp_client(running.url, tokens.admin, mode="auto") as client:
        got = await client.call_tool(
            "resources_get", {"apiVersion": "v1", "kind": "Namespace", "name": NS}
        )
    assert not got.is_error, text_of(got)
    assert f"name: {NS}" in text_of(got)
    # The default backend serves the same 2026 request.
    default = await backend_factory()
    resp = await _modern_post(default.url, tokens.admin, "server/discover", {})
    assert resp.status_code == 200, resp.text
    assert "2026-07-28" in json.dumps(resp.json()["result"])
