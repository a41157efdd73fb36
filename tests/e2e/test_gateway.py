"""End to end through the local gateway with the REAL MCP Gateway (broker/router v0.9.0): a real
MCP client → Envoy (the router as ext_proc, then token exchange and policy as ext_authz) → the
broker (sessions, the aggregated prefixed lists) or the server the router picked → clusters A and
B, with real Keycloak tokens of the demo users ``mcp`` (every tool) and ``viewer`` (read-only
tools; the prompt on server A only).

Two servers are registered: ``a_`` (server A, ``mcp-test/kubernetes-mcp``, cluster A) and ``b_``
(server B, ``mcp-test/kubernetes-mcp-b``, cluster B through the cross-domain exchange).

This module: several servers with prefixes, the aggregated lists filtered per user, prefixed
calls, the policy deciding on the router's headers. Sessions and the router's hairpin
initialize: ``test_gateway_sessions.py``; the signed header at the broker:
``test_broker_signed_header.py``; refused requests and fail closed: ``test_gateway_refusals.py``.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.shared.exceptions import MCPError

from gateway_plugins.policy.wristband import WristbandForm, WristbandSigner
from tests.e2e.gateway_logs import Decisions
from tests.e2e.mcp_http import (
    assert_filtered_per_user,
    call,
    catalogues_by_prefix,
    listed_names,
    metric_total,
    open_session,
    post,
    rpc,
    session,
    text_of,
    tools_per_user,
)
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

PROMPT = "cluster-health-check"


def _pod(text: str, cluster: str) -> str:
    return next(w for w in text.split() if w.startswith(f"web-{cluster}-"))


# -- 2. several servers with prefixes: the aggregated list, filtered per user ---------------------
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_aggregated_tools_list_of_both_servers_is_filtered_per_user(
    local_gateway: LocalGateway, tokens: dict[str, str], mode: str
) -> None:
    mcp_tools, viewer_tools = await tools_per_user(local_gateway.mcp_url, tokens, mode)
    # Every tool of both servers under its prefix for mcp, the read-only ones for viewer, and
    # nothing else: the broker's own meta-tools are not in the signed list either.
    assert_filtered_per_user(mcp_tools, viewer_tools, catalogues_by_prefix(local_gateway))
    assert "discover_tools" not in mcp_tools


async def test_prompts_are_granted_by_role_and_filtered_per_user(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    a, b = local_gateway.server_a, local_gateway.server_b
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        mcp_prompts = {p.name for p in (await client.list_prompts()).prompts}
        got = await client.get_prompt(b.tool(PROMPT), {"namespace": DEMO_NAMESPACE})
    assert mcp_prompts == {a.tool(PROMPT), b.tool(PROMPT)}
    assert "namespace 'demo'" in got.messages[0].content.text  # type: ignore[union-attr]
    decisions = Decisions(local_gateway)
    async with session(local_gateway.mcp_url, tokens["viewer"]) as client:
        viewer_prompts = {p.name for p in (await client.list_prompts()).prompts}
        allowed = await client.get_prompt(a.tool(PROMPT), {})
        with pytest.raises(MCPError) as denied:
            await client.get_prompt(b.tool(PROMPT), {})
    # Realm mcp: group viewers holds prompt:cluster-health-check on server A only.
    assert viewer_prompts == {a.tool(PROMPT)}
    assert allowed.messages
    assert "holds no role of mcp-test/kubernetes-mcp-b that grants prompt" in str(denied.value)
    # The policy decided prompts/get on the un-prefixed name the router set.
    gets = [d for d in decisions.new() if d["method"] == "prompts/get"]
    assert [(d["server"], d["prompt"], d["decision"]) for d in gets] == [
        (a.name, PROMPT, "allow"),
        (b.name, PROMPT, "deny"),
    ]


async def test_prefixed_calls_reach_the_right_backend_with_the_unprefixed_name(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    a, b = local_gateway.server_a, local_gateway.server_b
    backend_a = local_gateway.services["backend"].url
    backend_b = local_gateway.services["backend-b"].url
    name = "pods_list_in_namespace"
    before = {
        url: metric_total(url, "kmg_backend_tool_calls_total", tool=name)
        for url in (backend_a, backend_b)
    }
    decisions = Decisions(local_gateway)
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        on_a = await client.call_tool(a.tool(name), {"namespace": DEMO_NAMESPACE})
        on_b = await client.call_tool(b.tool(name), {"namespace": DEMO_NAMESPACE})
        again_b = await client.call_tool(b.tool(name), {"namespace": DEMO_NAMESPACE})
    assert not on_a.is_error, text_of(on_a)
    assert "web-cluster-a" in text_of(on_a)
    assert "web-cluster-b" not in text_of(on_a)
    # Server B reaches cluster B (trusts only realm cluster-b) through the cross-domain exchange.
    assert not on_b.is_error, text_of(on_b)
    assert "web-cluster-b" in text_of(on_b)
    assert "web-cluster-a" not in text_of(on_b)
    assert not again_b.is_error
    # Each backend ran its own un-prefixed tool (it knows no prefixed name): A once, B twice.
    assert (
        metric_total(backend_a, "kmg_backend_tool_calls_total", tool=name) == before[backend_a] + 1
    )
    assert (
        metric_total(backend_b, "kmg_backend_tool_calls_total", tool=name) == before[backend_b] + 2
    )
    # The policy saw exactly the headers the real router set: server, un-prefixed tool.
    calls = [d for d in decisions.new() if d["method"] == "tools/call"]
    assert [(d["server"], d["tool"], d["decision"]) for d in calls] == [
        (a.name, name, "allow"),
        (b.name, name, "allow"),
        (b.name, name, "allow"),
    ]
    # One hairpin initialize per (gateway session, server), through the gateway: token exchange
    # and policy ran on it, for the server the router named, and it was allowed as what it is.
    inits = [
        d for d in decisions.new() if d["method"] == "initialize" and d["server"] != "mcpBroker"
    ]
    assert sorted((d["server"], d["user"], d["decision"]) for d in inits) == [
        (a.name, "mcp", "allow"),
        (b.name, "mcp", "allow"),
    ]


async def test_policy_decides_on_the_router_headers_and_the_reason_reaches_the_mcp_client(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    a, b = local_gateway.server_a, local_gateway.server_b
    async with session(local_gateway.mcp_url, tokens["viewer"]) as client:
        listed = text_of(await client.call_tool(a.tool("pods_list_in_namespace"),
                                                {"namespace": DEMO_NAMESPACE}))  # fmt: skip
        pod = _pod(listed, "cluster-a")
        decisions = Decisions(local_gateway)
        # 5. The denial is a JSON-RPC error the client raises with the policy's reason.
        with pytest.raises(MCPError) as denied:
            await client.call_tool(
                a.tool("pods_delete"), {"namespace": DEMO_NAMESPACE, "name": pod}
            )
        with pytest.raises(MCPError) as denied_b:
            await client.call_tool(b.tool("pods_exec"), {"namespace": DEMO_NAMESPACE, "name": pod,
                                                         "command": ["id"]})  # fmt: skip
        after = text_of(await client.call_tool(a.tool("pods_list_in_namespace"),
                                               {"namespace": DEMO_NAMESPACE}))  # fmt: skip
    message = str(denied.value)
    assert "the gateway's policy denied this request" in message
    assert "viewer holds no role of mcp-test/kubernetes-mcp that grants tool pods_delete" in message
    assert "mcp-test/kubernetes-mcp-b that grants tool pods_exec" in str(denied_b.value)
    assert pod in after  # nothing was deleted
    denials = [d for d in decisions.new() if d["decision"] == "deny"]
    assert [(d["server"], d["tool"]) for d in denials] == [
        (a.name, "pods_delete"),
        (b.name, "pods_exec"),
    ]


async def test_a_denied_call_is_a_json_rpc_error_with_the_requests_id(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    sid = await open_session(url, tokens["viewer"])
    body = {**call(a.tool("pods_delete"), namespace=DEMO_NAMESPACE, name="x"), "id": "req-7"}
    resp = await post(url, body, tokens["viewer"], session_id=sid)
    assert resp.status_code == 403
    assert resp.headers["content-type"].startswith("application/json")
    answer = resp.json()
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] == "req-7"
    assert answer["error"]["code"] == -32003
    assert "grants tool pods_delete" in answer["error"]["message"]
    # Like every answer of the policy service: an explicit allow and the reason.
    assert answer["allow"] is False
    assert "pods_delete" in answer["reason"]


async def test_forged_gateway_headers_from_the_client_are_stripped(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    sid = await open_session(url, tokens["viewer"])
    viewer_list = listed_names(await post(url, rpc("tools/list"), tokens["viewer"], session_id=sid))
    # An attacker signs a list granting everything with its own ES256 key, in both forms, and
    # claims to be a call of an allowed tool on server A: Envoy drops every client x-mcp-* header
    # before the router (which would otherwise pass the client's x-mcp-authorized to the broker).
    attacker = WristbandSigner(ec.generate_private_key(ec.SECP256R1()), form=WristbandForm.BOTH)
    forged = attacker.sign(
        {a.name: ["pods_delete", "pods_exec"]}, prompts={a.name: [PROMPT]}
    ).headers
    headers = {
        **forged,
        "x-mcp-servername": a.name,
        "x-mcp-method": "tools/call",
        "x-mcp-toolname": "pods_list",
        "x-mcp-annotation-hints": "readOnly=true,destructive=false",
    }
    again = await post(url, rpc("tools/list"), tokens["viewer"], headers, sid)
    assert listed_names(again) == viewer_list
    assert a.tool("pods_delete") not in viewer_list
    denied = await post(
        url, call(a.tool("pods_delete"), namespace=DEMO_NAMESPACE, name="x"),
        tokens["viewer"], headers, sid,
    )  # fmt: skip
    assert denied.status_code == 403, denied.text
    assert "pods_delete" in denied.json()["reason"]
