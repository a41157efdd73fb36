"""What the gateway refuses: missing or forged tokens (401 with WWW-Authenticate), a bad token on a
session's first call, malformed JSON-RPC, an unknown tool; and fail closed: a stopped component
denies, then recovers when restarted. End to end through the local gateway with the REAL MCP Gateway
(broker/router v0.9.0), real Keycloak tokens of the demo users ``mcp`` and ``viewer`` (fixture
``tokens``: tests/e2e/conftest.py); the stack is described in ``test_gateway.py``.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.mcp_http import (
    call,
    open_session,
    post,
    result_of,
    rpc,
    session,
    tampered,
    text_of,
)
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

PROMPT = "cluster-health-check"


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
