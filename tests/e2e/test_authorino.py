"""End to end through the REAL Authorino configured from the Kuadrant overlay, behind the REAL MCP
Gateway: a real MCP client → Envoy (the broker/router v0.9.0 as ext_proc, then gRPC ext_authz to
Authorino) → the broker or the server the router picked → clusters A and B, with real Keycloak
tokens of the demo users ``mcp`` (every tool) and ``viewer`` (read-only tools).

Authorino evaluates the overlay's own AuthPolicy rules (``manifests/overlays/kuadrant``,
translated as Kuadrant does, only addresses rewritten): JWT authentication at realm ``mcp``, the
``exchange`` metadata call to our ``/token`` facade, the ``policy`` call to ``/v1/decide``, the
``allow == true`` authorization and the response headers and denials.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes_asyncio.client.exceptions import ApiException
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway_logs import Decisions
from tests.e2e.mcp_http import (
    UserTokens,
    assert_filtered_per_user,
    call,
    catalogues_by_prefix,
    listed_names,
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
from tests.testbed.mcp_gateway.authorino_stack import (
    BACKEND_POLICY,
    BROKER_POLICY,
    AuthorinoGateway,
)
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, DEMO_USERS, SERVER_NAME

LIST_PODS = call("a_pods_list_in_namespace", namespace=DEMO_NAMESPACE)


@pytest.fixture(scope="module")
async def tokens(authorino_gateway: AuthorinoGateway) -> UserTokens:
    return UserTokens({user: authorino_gateway.user_token(user) for user in ("mcp", "viewer")})


@pytest.fixture(scope="module")
def catalogues(authorino_gateway: AuthorinoGateway) -> dict[str, dict[str, dict[str, Any]]]:
    """Both backends' real, unfiltered tools/list by tool prefix (fetched at start)."""
    return catalogues_by_prefix(authorino_gateway.gateway)


def deny_with(gateway: AuthorinoGateway, policy: str, kind: str) -> dict[str, Any]:
    """The overlay's ``response.<kind>`` (unauthenticated / unauthorized) of one AuthPolicy."""
    response: dict[str, Any] = gateway.authconfigs[policy]["spec"]["response"][kind]
    return response


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (to look at ``aud``; never printed)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def exchanges_for(gateway: AuthorinoGateway, target: str) -> float:
    """``token_exchange_requests_total`` of one target, summed over outcomes (its /metrics)."""
    url = f"{gateway.services['token-exchange'].url}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URL
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("token_exchange_requests_total{") and f'target="{target}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- (a) allowed tools/call -----------------------------------------------------------------------
NARROW_CLIENT = "kmg-e2e-narrow-audience"
SHORT_LIVED_CLIENT = "kmg-e2e-short-lived"


def _test_client(client_id: str, **extra: Any) -> dict[str, Any]:
    """A public client whose user tokens carry only ``aud: mcp-gateway`` (no client roles, so no
    role-derived audiences): such a token is valid for the gateway but not for cluster A."""
    return {
        "clientId": client_id,
        "publicClient": True,
        "directAccessGrantsEnabled": True,
        "standardFlowEnabled": False,
        "fullScopeAllowed": False,
        "protocolMappers": [
            {
                "name": "audience mcp-gateway",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.client.audience": "mcp-gateway",
                    "access.token.claim": "true",
                    "introspection.token.claim": "true",
                },
            }
        ],
        **extra,
    }


@asynccontextmanager
async def realm_client(gateway: AuthorinoGateway, client: dict[str, Any]) -> AsyncIterator[str]:
    """``client`` created in realm ``mcp`` for the block (then deleted); yields its client id."""
    keycloak = gateway.gateway.keycloak
    clients = f"realms/{REALM_MCP}/clients"
    await asyncio.to_thread(keycloak.admin_request, "POST", clients, client)
    found = await asyncio.to_thread(keycloak.admin_get, f"{clients}?clientId={client['clientId']}")
    try:
        yield str(client["clientId"])
    finally:
        await asyncio.to_thread(keycloak.admin_request, "DELETE", f"{clients}/{found[0]['id']}")


async def _user_token(gateway: AuthorinoGateway, user: str, client_id: str) -> str:
    keycloak = gateway.gateway.keycloak
    return await asyncio.to_thread(keycloak.user_token, user, DEMO_USERS[user], client_id=client_id)


@pytest.fixture(scope="module")
async def narrow_token(authorino_gateway: AuthorinoGateway) -> AsyncIterator[UserTokens]:
    """User ``mcp``'s token of a gateway-only client (see :func:`_test_client`)."""
    async with realm_client(authorino_gateway, _test_client(NARROW_CLIENT)) as client_id:
        yield UserTokens({"mcp": await _user_token(authorino_gateway, "mcp", client_id)})


@pytest.fixture(scope="module")
async def expired_token(authorino_gateway: AuthorinoGateway) -> AsyncIterator[UserTokens]:
    """A genuine Keycloak token of user ``mcp`` past its ``exp`` (client lifespan 2 s)."""
    client = _test_client(SHORT_LIVED_CLIENT, attributes={"access.token.lifespan": "2"})
    async with realm_client(authorino_gateway, client) as client_id:
        token = await _user_token(authorino_gateway, "mcp", client_id)
        claims = claims_of(token)
        assert claims["exp"] - claims["iat"] <= 2, "the short lifespan did not apply"
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.5)
        yield UserTokens({"mcp": token})


async def test_allowed_call_reaches_the_backend_with_an_exchanged_token(
    authorino_gateway: AuthorinoGateway, narrow_token: dict[str, str]
) -> None:
    token = narrow_token["mcp"]
    cluster_a = authorino_gateway.gateway.cluster_a
    # The user's own token is meant for the gateway only: cluster A refuses it (audience).
    audience = claims_of(token)["aud"]
    assert audience in ("mcp-gateway", ["mcp-gateway"]), audience
    with pytest.raises(ApiException) as refused:
        await cluster_a.whoami(token)
    assert refused.value.status == 401

    before = exchanges_for(authorino_gateway, SERVER_NAME)
    async with session(authorino_gateway.mcp_url, token) as client:
        ok = await client.call_tool("a_pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        other = await client.call_tool("a_pods_list_in_namespace", {"namespace": "kube-system"})
        on_b = await client.call_tool("b_pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
    # Authorino's `exchange` metadata call reached our /token facade for the backend's audience,
    assert exchanges_for(authorino_gateway, SERVER_NAME) > before
    # and cluster A accepted the token the backend forwarded: so it was the exchanged one
    # (audience mcp-test/kubernetes-mcp), put into `authorization` by the overlay's response.
    assert not ok.is_error, text_of(ok)
    assert "web-cluster-a" in text_of(ok)
    # The API server sees the same user (RBAC binds `mcp` in `demo` only): identity preserved.
    assert other.is_error
    assert "user 'mcp'" in text_of(other), text_of(other)
    assert "403 Forbidden" in text_of(other), text_of(other)
    # Server B: its own audience, then the cross-domain exchange to cluster B.
    assert not on_b.is_error, text_of(on_b)
    assert "web-cluster-b" in text_of(on_b)


# -- (b) a tool the viewer is not granted ---------------------------------------------------------
async def test_viewer_gets_the_policys_reason_for_a_tool_not_granted(
    authorino_gateway: AuthorinoGateway, tokens: dict[str, str]
) -> None:
    url = authorino_gateway.mcp_url
    async with session(url, tokens["viewer"]) as client:  # its read-only call is allowed
        before = await client.call_tool("a_pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
    assert not before.is_error, text_of(before)
    pod = next(w for w in text_of(before).split() if w.startswith("web-cluster-a-"))
    sid = await open_session(url, tokens["viewer"])
    resp = await post(
        url, call("a_pods_delete", namespace=DEMO_NAMESPACE, name=pod), tokens["viewer"],
        session_id=sid,
    )  # fmt: skip
    expected = deny_with(authorino_gateway, BACKEND_POLICY, "unauthorized")
    assert resp.status_code == expected["code"] == 403, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    # The overlay's body is a JSON-RPC error carrying the policy service's reason.
    answer = resp.json()
    assert answer["jsonrpc"] == "2.0"
    assert answer["error"]["code"] == -32003
    reason = "viewer holds no role of mcp-test/kubernetes-mcp that grants tool pods_delete"
    assert answer["error"]["message"] == f"MCP tool access denied by policy: {reason}"
    # It was the policy service's answer (via /v1/decide) that denied, naming user and tool.
    denial = [
        d
        for d in Decisions(authorino_gateway.gateway, from_start=True).new()
        if d.get("endpoint") == "decide" and d.get("tool") == "pods_delete"
    ]
    assert denial, "the policy service was not asked"
    assert denial[-1]["decision"] == "deny"
    assert denial[-1]["user"] == "viewer"
    # The real MCP client raises the error with that reason, and the pod is still there.
    async with session(url, tokens["viewer"]) as client:
        with pytest.raises(MCPError, match=reason):
            await client.call_tool("a_pods_delete", {"namespace": DEMO_NAMESPACE, "name": pod})
        after = text_of(
            await client.call_tool("a_pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        )
    assert pod in after


async def test_prompts_through_authorino(
    authorino_gateway: AuthorinoGateway, tokens: dict[str, str]
) -> None:
    url = authorino_gateway.mcp_url
    async with session(url, tokens["viewer"]) as client:
        listed = {p.name for p in (await client.list_prompts()).prompts}
        got = await client.get_prompt("a_cluster-health-check", {})
        with pytest.raises(MCPError, match="grants prompt cluster-health-check"):
            await client.get_prompt("b_cluster-health-check", {})
    assert listed == {"a_cluster-health-check"}
    assert got.messages


# -- (c) tools/list through the broker route -------------------------------------------------------
async def test_tools_list_is_filtered_per_user_by_the_signed_header(
    authorino_gateway: AuthorinoGateway,
    tokens: dict[str, str],
    catalogues: dict[str, dict[str, dict[str, Any]]],
) -> None:
    mcp_tools, viewer_tools = await tools_per_user(authorino_gateway.mcp_url, tokens)
    # The broker enforces capability filtering: without the signed header Authorino copies from
    # the policy's /v1/decide answer, every list would be empty.
    assert_filtered_per_user(mcp_tools, viewer_tools, catalogues)
    # The same through a plain JSON-RPC POST.
    url = authorino_gateway.mcp_url
    sid = await open_session(url, tokens["viewer"])
    plain = listed_names(await post(url, rpc("tools/list"), tokens["viewer"], session_id=sid))
    assert set(plain) == viewer_tools


# -- (d) authentication ---------------------------------------------------------------------------
def _self_signed(issuer: str, *, expires_in: int) -> str:
    return jwt.encode(
        {
            "iss": issuer,
            "sub": "x",
            "aud": SERVER_NAME,
            "iat": int(time.time()) - 600,
            "exp": int(time.time()) + expires_in,
            "preferred_username": "mcp",
        },
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": "attacker"},
    )


async def test_missing_forged_or_expired_token_gets_401_with_the_overlays_challenge(
    authorino_gateway: AuthorinoGateway, tokens: dict[str, str], expired_token: dict[str, str]
) -> None:
    issuer = authorino_gateway.gateway.keycloak.issuer(REALM_MCP)
    cases = {
        "missing": None,
        "tampered": tampered(tokens["mcp"]),
        "self-signed": _self_signed(issuer, expires_in=300),
        "self-signed, expired": _self_signed(issuer, expires_in=-300),
        "Keycloak's, expired": expired_token["mcp"],
        "not a JWT": "opaque-garbage",
    }
    routes = {BROKER_POLICY: rpc("tools/list"), BACKEND_POLICY: LIST_PODS}
    # A session whose hairpin to server A is done (a real user's): the call's own AuthConfig
    # answers (a bad token on a session's first call fails at the router's hairpin instead).
    url = authorino_gateway.mcp_url
    sid = await open_session(url, tokens["mcp"])
    assert (await post(url, LIST_PODS, tokens["mcp"], session_id=sid)).status_code == 200
    for policy, body in routes.items():
        expected = deny_with(authorino_gateway, policy, "unauthenticated")
        challenge = expected["headers"]["WWW-Authenticate"]["value"]
        assert challenge.startswith(
            f"Bearer resource_metadata={authorino_gateway.gateway.envoy.url}/"
        )
        for what, token in cases.items():
            resp = await post(url, body, token, session_id=sid)
            assert resp.status_code == expected["code"] == 401, (policy, what, resp.text)
            assert resp.headers.get("www-authenticate") == challenge, (policy, what)
            assert resp.json() == json.loads(expected["body"]["value"]), (policy, what)
            assert "web-cluster-a" not in resp.text
            assert tokens["mcp"] not in resp.text
    # The challenge points at public metadata served through the same gateway.
    async with httpx2.AsyncClient(timeout=30) as http:
        meta = await http.get(challenge.split("resource_metadata=", 1)[1])
    assert meta.status_code == 200
    assert meta.json()["authorization_servers"] == [issuer]


# -- (e) fail closed -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("service", "denied", "says"),
    [
        ("policy", (rpc("tools/list"), LIST_PODS), "the policy service gave no decision"),
        ("token-exchange", (LIST_PODS,), "the token exchange for this server failed"),
    ],
)
async def test_a_stopped_plugin_denies_then_recovers(
    authorino_gateway: AuthorinoGateway,
    tokens: dict[str, str],
    service: str,
    denied: tuple[dict[str, Any], ...],
    says: str,
) -> None:
    url = authorino_gateway.mcp_url
    sid = await open_session(url, tokens["mcp"])
    assert (await post(url, LIST_PODS, tokens["mcp"], session_id=sid)).status_code == 200
    svc = authorino_gateway.services[service]
    svc.stop()
    try:
        for body in denied:
            resp = await post(url, body, tokens["mcp"], session_id=sid)
            # Authorino's metadata call failed: no `allow == true`, so the overlay denies.
            assert resp.status_code == 403, (service, body["method"], resp.status_code, resp.text)
            assert "web-cluster-a" not in resp.text
            if body["method"] == "tools/list":
                expected = deny_with(authorino_gateway, BROKER_POLICY, "unauthorized")
                assert resp.json() == json.loads(expected["body"]["value"])
            else:
                assert says in resp.json()["error"]["message"]
    finally:
        svc.start()
        if service in authorino_gateway.gateway.brokers:
            authorino_gateway.gateway.refresh_routing_tables()
    resp = await post(url, LIST_PODS, tokens["mcp"], session_id=sid)
    assert "web-cluster-a" in json.dumps(result_of(resp))


async def test_authorino_down_denies_then_recovers(
    authorino_gateway: AuthorinoGateway, tokens: dict[str, str]
) -> None:
    url = authorino_gateway.mcp_url
    sid = await open_session(url, tokens["mcp"])
    assert (await post(url, LIST_PODS, tokens["mcp"], session_id=sid)).status_code == 200
    authorino = authorino_gateway.authorino
    authorino.stop()
    try:
        for body in (rpc("initialize"), rpc("tools/list"), LIST_PODS):
            resp = await post(url, body, tokens["mcp"], session_id=sid)
            # failure_mode_allow: false: Envoy denies when Authorino cannot be reached.
            assert resp.status_code == 502, (body["method"], resp.status_code, resp.text)
            assert resp.json()["allow"] is False
            assert "cannot be reached" in resp.json()["reason"]
    finally:
        authorino_gateway.restart_authorino()
    resp = await post(url, LIST_PODS, tokens["mcp"], session_id=sid)
    assert "web-cluster-a" in json.dumps(result_of(resp))
