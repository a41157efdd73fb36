"""End to end through the local gateway with the REAL MCP Gateway (broker/router v0.9.0): a real
MCP client → Envoy (the router as ext_proc, then token exchange and policy as ext_authz) → the
broker (sessions, the aggregated prefixed lists) or the server the router picked → clusters A and
B, with real Keycloak tokens of the demo users ``mcp`` (every tool) and ``viewer`` (read-only
tools; the prompt on server A only).

Two servers are registered: ``a_`` (server A, ``mcp-test/kubernetes-mcp``, cluster A) and ``b_``
(server B, ``mcp-test/kubernetes-mcp-b``, cluster B through the cross-domain exchange).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp.shared.exceptions import MCPError

from gateway_plugins.policy.wristband import WristbandForm, WristbandSigner
from tests.e2e.mcp_http import (
    UserTokens,
    assert_filtered_per_user,
    call,
    catalogues_by_prefix,
    listed_names,
    metric_total,
    open_session,
    post,
    result_of,
    rpc,
    session,
    tampered,
    text_of,
    tools_per_user,
)
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

PROMPT = "cluster-health-check"


@pytest.fixture(scope="module")
async def tokens(local_gateway: LocalGateway) -> UserTokens:
    return UserTokens({user: local_gateway.user_token(user) for user in ("mcp", "viewer")})


class Decisions:
    """The policy service's decision log from a point on (one JSON object a line)."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.path = gateway.gateway_dir / "policy-decisions.jsonl"
        self.start = self.path.stat().st_size

    def new(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def envoy_counter(gateway: LocalGateway, name: str) -> int:
    """One counter of the gateway's Envoy (admin ``/stats``); 0 before it first counts."""
    with urllib.request.urlopen(f"{gateway.envoy.admin_url}/stats", timeout=10) as resp:  # noqa: S310
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    return 0


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


# -- gateway sessions and the router's hairpin initialize -----------------------------------------
async def test_gateway_sessions_come_from_the_broker_and_calls_need_one(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    listing = call(a.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE)
    sid = await open_session(url, tokens["mcp"])
    # The broker's session id is a JWT it signed (GATEWAY_SIGNING_KEY); our backend has none.
    assert sid.count(".") == 2
    assert jwt.get_unverified_header(sid)["alg"].startswith("HS")
    ok = await post(url, listing, tokens["mcp"], session_id=sid)
    assert "web-cluster-a" in json.dumps(result_of(ok))
    # The router refuses a call without a session, or with one the broker did not sign.
    missing = await post(url, listing, tokens["mcp"])
    assert missing.status_code == 400
    assert "no session ID found" in missing.text
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256")
    bad = await post(url, listing, tokens["mcp"], session_id=forged)
    assert bad.status_code == 401
    assert "session no longer valid" in bad.text
    for resp in (missing, bad):
        assert "web-cluster-a" not in resp.text


async def test_only_the_routers_own_hairpin_initialize_reaches_a_server(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    """A client that sends an initialize dressed as the router's hairpin (``mcp-init-host`` of a
    server, a ``router-key`` it cannot sign) is refused by the router: the servers' virtual hosts
    are reached only through the router's own decisions."""
    url, b = local_gateway.mcp_url, local_gateway.server_b
    routed_to_b = f"cluster.{b.cluster}.upstream_rq_total"  # Envoy → server B, whatever the answer
    before = envoy_counter(local_gateway, routed_to_b)
    init = rpc(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {},
         "clientInfo": {"name": "x", "version": "1"}},
    )  # fmt: skip
    forged_key = jwt.encode({"host": b.hostname}, "k" * 32, algorithm="HS256")
    for headers in (
        {"mcp-init-host": b.hostname, "router-key": forged_key},
        {"mcp-init-host": b.hostname},
        {"Host": b.hostname},  # straight at a server's virtual host
    ):
        resp = await post(url, init, tokens["mcp"], headers)
        if "Host" in headers:
            # The router sets :authority to the gateway's own host first: this is the broker's
            # initialize, which opens a gateway session.
            assert resp.status_code == 200, resp.text
            assert resp.headers.get("mcp-session-id")
        else:
            assert resp.status_code == 400, (headers.keys(), resp.status_code, resp.text)
    assert envoy_counter(local_gateway, routed_to_b) == before


# -- 3. the signed header at the real broker ------------------------------------------------------
@pytest.fixture(scope="module")
def policy_signer(local_gateway: LocalGateway) -> WristbandSigner:
    """The policy service's own signing key (the broker trusts its public key)."""
    from gateway_plugins.policy.wristband import load_signing_key

    key = load_signing_key(local_gateway.gateway_dir / "secrets" / "wristband-signing.key")
    return WristbandSigner(key)


@pytest.mark.parametrize(
    ("forms", "listed"),
    [
        pytest.param((), False, id="no header"),
        pytest.param((WristbandForm.CURRENT,), True, id="x-mcp-authorized"),
        pytest.param((WristbandForm.LEGACY,), False, id="x-authorized-tools only"),
        pytest.param((WristbandForm.BOTH,), True, id="both forms"),
    ],
)
async def test_the_real_broker_reads_the_signed_header_forms(
    local_gateway: LocalGateway,
    tokens: dict[str, str],
    policy_signer: WristbandSigner,
    forms: tuple[WristbandForm, ...],
    listed: bool,
) -> None:
    """Straight at the broker (as Envoy would forward after auth), with
    ``--enforce-capability-filtering``: v0.9.0 reads ``x-mcp-authorized`` (claim
    ``allowed-capabilities``) only; the older ``x-authorized-tools`` alone lists nothing."""
    a, b = local_gateway.server_a, local_gateway.server_b
    broker = local_gateway.broker_url
    sid = await open_session(broker, tokens["mcp"])
    headers: dict[str, str] = {}
    for form in forms:
        headers.update(
            policy_signer.sign(
                {a.name: ["pods_list", "pods_get"], b.name: ["events_list"]},
                prompts={b.name: [PROMPT]},
                form=form,
            ).headers
        )
    tools = listed_names(await post(broker, rpc("tools/list"), tokens["mcp"], headers, sid))
    prompts = await post(broker, rpc("prompts/list"), tokens["mcp"], headers, sid)
    prompt_names = sorted(p["name"] for p in result_of(prompts)["prompts"])
    if listed:
        assert tools == sorted([a.tool("pods_get"), a.tool("pods_list"), b.tool("events_list")])
        assert prompt_names == [b.tool(PROMPT)]
    else:
        assert tools == []
        assert prompt_names == []


async def test_the_real_broker_refuses_a_foreign_or_expired_signed_header(
    local_gateway: LocalGateway, tokens: dict[str, str], policy_signer: WristbandSigner
) -> None:
    a = local_gateway.server_a
    broker = local_gateway.broker_url
    sid = await open_session(broker, tokens["mcp"])
    grant = {a.name: ["pods_list"]}
    foreign = WristbandSigner(ec.generate_private_key(ec.SECP256R1()), form=WristbandForm.CURRENT)
    cases = {
        "good": policy_signer.sign(grant, form=WristbandForm.CURRENT).headers,
        "foreign key": foreign.sign(grant).headers,
        "expired": policy_signer.sign(
            grant, form=WristbandForm.CURRENT, now=time.time() - 3600
        ).headers,
    }
    listed = {
        case: listed_names(await post(broker, rpc("tools/list"), tokens["mcp"], headers, sid))
        for case, headers in cases.items()
    }
    assert listed == {"good": [a.tool("pods_list")], "foreign key": [], "expired": []}


# -- authentication -------------------------------------------------------------------------------
async def test_missing_or_forged_token_gets_401_with_www_authenticate(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    self_signed = jwt.encode(
        {
            "iss": local_gateway.keycloak.issuer(REALM_MCP),
            "sub": "x",
            "aud": a.name,
            "exp": int(time.time()) + 300,
            "preferred_username": "mcp",
        },
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": "attacker"},
    )
    cases = {
        "missing": None,
        "tampered": tampered(tokens["mcp"]),
        "self-signed": self_signed,
        "not a JWT": "opaque-garbage",
    }
    # A session whose hairpin to server A is done (a real user's): the call's own auth answers.
    sid = await open_session(url, tokens["mcp"])
    listing = call(a.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE)
    assert (await post(url, listing, tokens["mcp"], session_id=sid)).status_code == 200
    for what, token in cases.items():
        for body in (rpc("initialize"), rpc("tools/list"), listing):
            resp = await post(url, body, token, session_id=sid)
            assert resp.status_code == 401, (what, body["method"], resp.status_code, resp.text)
            challenge = resp.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer"), (what, challenge)
            assert "resource_metadata=" in challenge, (what, challenge)
            assert resp.json()["allow"] is False
            assert tokens["mcp"] not in resp.text
            assert "web-cluster-a" not in resp.text
    # The metadata the challenge points at is public (no token): the broker's RFC 9728 answer.
    meta = await post(local_gateway.envoy.url + "/.well-known/oauth-protected-resource/mcp", b"")
    assert meta.status_code == 200
    assert meta.json()["authorization_servers"] == [local_gateway.keycloak.issuer(REALM_MCP)]
    assert meta.json()["resource"] == url


async def test_a_bad_token_on_a_sessions_first_call_fails_at_the_hairpin(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    """The router's hairpin initialize (first call per session and server) carries the caller's
    token through the gateway again: a bad one fails there, and the router answers the call
    itself (401 from the hairpin, its own text) before the call's own auth steps run."""
    url, b = local_gateway.mcp_url, local_gateway.server_b
    sid = await open_session(url, tokens["mcp"])
    resp = await post(url, call(b.tool("events_list")), tampered(tokens["mcp"]), session_id=sid)
    assert resp.status_code == 401, resp.text
    assert "failed to create session for mcp server" in resp.text
    assert "web-cluster-b" not in resp.text


async def test_malformed_jsonrpc_is_refused_by_the_router(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url = local_gateway.mcp_url
    sid = await open_session(url, tokens["mcp"])
    cases = (
        (b"{not json", "invalid request body"),
        (json.dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}).encode(),
         "invalid mcp request"),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}).encode(),
         "no tool name set"),
    )  # fmt: skip
    for body, says in cases:
        resp = await post(url, body, tokens["mcp"], session_id=sid)
        assert resp.status_code == 400, (body, resp.status_code, resp.text)
        assert says in resp.text


async def test_unknown_tool_gets_the_routers_tool_not_found(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        result = await client.call_tool("zz_no_such_tool", {})
    assert result.is_error
    assert "Tool not found" in text_of(result)


# -- fail closed ----------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["token-exchange", "policy", "mcp-gateway"])
async def test_a_stopped_component_denies_then_recovers_when_restarted(
    local_gateway: LocalGateway, tokens: dict[str, str], service: str
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    allowed = call(a.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE)
    sid = await open_session(url, tokens["mcp"])
    assert (await post(url, allowed, tokens["mcp"], session_id=sid)).status_code == 200
    svc = local_gateway.services[service]
    svc.stop()
    try:
        for body in (rpc("initialize"), rpc("tools/list"), allowed):
            resp = await post(url, body, tokens["mcp"], session_id=sid)
            # failure_mode_allow: false: an unreachable check service or router denies
            # (status_on_error), with a JSON reason from the gateway's local reply.
            assert resp.status_code == 502, (service, resp.status_code, resp.text)
            assert resp.json()["allow"] is False
            assert "cannot be reached" in resp.json()["reason"]
            assert "web-cluster-a" not in resp.text
    finally:
        svc.start()
        if service in local_gateway.brokers:
            local_gateway.refresh_routing_tables()
    # Sessions live in the broker's memory: a restarted broker/router needs a new one.
    sid = await open_session(url, tokens["mcp"])
    resp = await post(url, allowed, tokens["mcp"], session_id=sid)
    assert "web-cluster-a" in json.dumps(result_of(resp))
