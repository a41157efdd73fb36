"""End to end through the local gateway: a real MCP client → Envoy (router stand-in, token
exchange, policy as ext_authz filters) → broker stand-in / mcp_backend → clusters A and B, with
real Keycloak tokens of the demo users ``mcp`` (every tool) and ``viewer`` (read-only tools)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_plugins.policy.wristband import WristbandForm, WristbandSigner
from tests.e2e.mcp_http import (
    UserTokens,
    assert_filtered_per_user,
    call,
    catalogue_of,
    listed_names,
    post,
    rpc,
    session,
    tampered,
    text_of,
    tools_per_user,
)
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, SERVER_NAME, LocalGateway


@pytest.fixture(scope="module")
async def tokens(local_gateway: LocalGateway) -> UserTokens:
    return UserTokens({user: local_gateway.user_token(user) for user in ("mcp", "viewer")})


@pytest.fixture(scope="module")
def catalogue(local_gateway: LocalGateway) -> dict[str, dict[str, Any]]:
    """The backend's real, unfiltered tools/list (fetched when the stack started)."""
    return catalogue_of(local_gateway.gateway_dir, SERVER_NAME)


# -- tools/list -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_is_filtered_per_user(
    local_gateway: LocalGateway,
    tokens: dict[str, str],
    catalogue: dict[str, dict[str, Any]],
    mode: str,
) -> None:
    mcp_tools, viewer_tools = await tools_per_user(local_gateway.mcp_url, tokens, mode)
    assert_filtered_per_user(mcp_tools, viewer_tools, catalogue)


async def test_forged_gateway_headers_from_the_client_are_stripped(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    viewer_list = listed_names(
        await post(local_gateway.mcp_url, rpc("tools/list"), tokens["viewer"])
    )
    # An attacker signs a tool list granting everything with its own ES256 key, and claims to be
    # a tools/call of an allowed tool on the backend: Envoy drops every client x-mcp-* header.
    attacker = WristbandSigner(ec.generate_private_key(ec.SECP256R1()), form=WristbandForm.BOTH)
    forged = attacker.sign({SERVER_NAME: ["pods_delete", "pods_exec"]}).headers
    headers = {
        **forged,
        "x-mcp-servername": SERVER_NAME,
        "x-mcp-method": "tools/call",
        "x-mcp-toolname": "pods_list",
    }
    again = await post(local_gateway.mcp_url, rpc("tools/list"), tokens["viewer"], headers)
    assert listed_names(again) == viewer_list
    denied = await post(
        local_gateway.mcp_url,
        call("pods_delete", namespace=DEMO_NAMESPACE, name="x"),
        tokens["viewer"],
        {**headers, "x-mcp-annotation-hints": "readOnly=true,destructive=false"},
    )
    assert denied.status_code == 403, denied.text
    assert "pods_delete" in denied.json()["reason"]


# -- tools/call -----------------------------------------------------------------------------------
async def test_allowed_call_runs_with_the_users_own_rbac_on_cluster_a(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        ok = await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        # The policy allows the tool, but the user's RBAC on the cluster (bound in `demo` only)
        # refuses another namespace: the API server decides with the user's own identity.
        refused = await client.call_tool("pods_list_in_namespace", {"namespace": "kube-system"})
    assert not ok.is_error, text_of(ok)
    assert "web-cluster-a" in text_of(ok)
    assert refused.is_error
    assert "forbidden" in text_of(refused).lower() or "403" in text_of(refused)


async def test_denied_call_gets_403_with_the_policy_reason(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        before = text_of(
            await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        )
    pod = next(w for w in before.split() if w.startswith("web-cluster-a-"))
    resp = await post(
        local_gateway.mcp_url,
        call("pods_delete", namespace=DEMO_NAMESPACE, name=pod),
        tokens["viewer"],
    )
    assert resp.status_code == 403
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["allow"] is False
    assert "viewer" in body["reason"]
    assert "pods_delete" in body["reason"]
    # The real MCP client sees the refusal as an error, and the pod is still there.
    async with session(local_gateway.mcp_url, tokens["viewer"]) as client:
        with pytest.raises(Exception, match="error"):
            await client.call_tool("pods_delete", {"namespace": DEMO_NAMESPACE, "name": pod})
        after = text_of(
            await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        )
    assert pod in after


async def test_cross_domain_call_on_cluster_b(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        result = await client.call_tool(
            "pods_list_in_namespace", {"namespace": DEMO_NAMESPACE, "context": "cluster-b"}
        )
    assert not result.is_error, text_of(result)
    assert "web-cluster-b" in text_of(result)
    assert "web-cluster-a" not in text_of(result)


async def test_unknown_tool_gets_the_gateways_tool_not_found(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    resp = await post(local_gateway.mcp_url, call("no_such_tool"), tokens["mcp"])
    # Fail closed: either the policy refuses a tool it does not know, or the broker answers
    # the upstream router's "Tool not found"; the call never reaches a cluster.
    if resp.status_code == 200:
        result = resp.json()["result"]
        assert result["isError"] is True
        assert "Tool not found" in result["content"][0]["text"]
    else:
        assert resp.status_code == 403, resp.text
        assert resp.json()["allow"] is False


# -- authentication -------------------------------------------------------------------------------
async def test_missing_or_forged_token_gets_401_with_www_authenticate(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    self_signed = jwt.encode(
        {
            "iss": local_gateway.keycloak.issuer(REALM_MCP),
            "sub": "x",
            "aud": SERVER_NAME,
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
    for what, token in cases.items():
        for body in (rpc("tools/list"), call("pods_list_in_namespace", namespace=DEMO_NAMESPACE)):
            resp = await post(local_gateway.mcp_url, body, token)
            assert resp.status_code == 401, (what, resp.status_code, resp.text)
            challenge = resp.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer"), (what, challenge)
            assert "resource_metadata=" in challenge, (what, challenge)
            assert resp.json()["allow"] is False
            assert tokens["mcp"] not in resp.text
    # The metadata the challenge points at is public (no token) through the gateway.
    async with httpx2.AsyncClient(timeout=30) as http:
        meta = await http.get(f"{local_gateway.envoy.url}/.well-known/oauth-protected-resource/mcp")
    assert meta.status_code == 200
    assert meta.json()["authorization_servers"] == [local_gateway.keycloak.issuer(REALM_MCP)]


async def test_malformed_jsonrpc_gets_a_clear_400(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    for body, says in (
        (b"{not json", "not valid JSON"),
        (
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}).encode(),
            "no tool name",
        ),
    ):
        resp = await post(local_gateway.mcp_url, body, tokens["mcp"])
        assert resp.status_code == 400, resp.text
        assert says in resp.json()["error"]["message"]


# -- fail closed ----------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["token-exchange", "policy", "mcp-gateway"])
async def test_a_stopped_plugin_denies_then_recovers_when_restarted(
    local_gateway: LocalGateway, tokens: dict[str, str], service: str
) -> None:
    url = local_gateway.mcp_url
    allowed = call("pods_list_in_namespace", namespace=DEMO_NAMESPACE)
    assert (await post(url, allowed, tokens["mcp"])).status_code == 200
    svc = local_gateway.services[service]
    svc.stop()
    try:
        for body in (rpc("tools/list"), allowed):
            resp = await post(url, body, tokens["mcp"])
            # failure_mode_allow: false: an unreachable check service denies (status_on_error),
            # with a JSON reason from the gateway's local reply.
            assert resp.status_code == 502, (service, resp.status_code, resp.text)
            assert resp.json()["allow"] is False
            assert "cannot be reached" in resp.json()["reason"]
            assert "web-cluster-a" not in resp.text
    finally:
        svc.start()
    resp = await post(url, allowed, tokens["mcp"])
    assert resp.status_code == 200, resp.text
    assert "web-cluster-a" in json.dumps(resp.json())
