"""Hostile bearer tokens against the token exchange and policy services (direct, over HTTP) and
through the whole local gateway: every one is refused before any upstream call.

Upstream calls are counted independently of the answer: the token service's STS call counter
(Keycloak token endpoint), the policy service's engine histogram, the local issuer's JWKS hit
counter and the backend's tool-call counter behind the gateway.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.common.issuer import LocalIssuer, new_rsa
from tests.gateway_plugins.policy.running import SERVER, RunningPolicy
from tests.gateway_plugins.token_exchange.running import (
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    RunningService,
)
from tests.reliability.conftest import metrics_text
from tests.reliability.hostile import LOCAL_AUDIENCE, hostile_tokens, metric_total
from tests.testbed import keycloak as kc
from tests.testbed import leak_scan
from tests.testbed.identity_plan import BACKEND_AUDIENCE

pytestmark = pytest.mark.timeout(600)

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
# aiohttp refuses request headers over 8 KB with 400 before any handler runs; Envoy over 60 KB
# with 431. Either is a refusal before any upstream call; every other kind must get 401.
OVERSIZED = "64 KB long (signed)"


@pytest.fixture(scope="module")
async def catalogue(
    keycloak: kc.Keycloak,
    local_issuer: LocalIssuer,
    untrusted_issuer: LocalIssuer,
    realm_public_key: tuple[Any, str],
) -> dict[str, str]:
    realm_token = await keycloak.auser_token("viewer", "viewer")  # type: ignore[attr-defined]
    tokens = hostile_tokens(local_issuer, untrusted_issuer, realm_token, realm_public_key[0])
    for kind, token in tokens.items():
        leak_scan.register_secret(token, f"hostile token: {kind}")
    return tokens


def _assert_refused(kind: str, status: int, body: str, headers: Any, token: str) -> None:
    if kind == OVERSIZED:
        assert status in (400, 401, 431), (kind, status, body[:200])
    else:
        assert status == 401, (kind, status, body[:300])
        assert json.loads(body)["allow"] is False, (kind, body)
        assert json.loads(body)["reason"], (kind, body)
        assert "Bearer" in headers.get("WWW-Authenticate", ""), kind
    assert token not in body, kind
    assert all(token not in v for v in headers.values()), kind


async def _te_check(
    http: aiohttp.ClientSession, svc: RunningService, token: str, target: str = BACKEND_AUDIENCE
) -> tuple[int, str, Any]:
    headers = {
        "authorization": f"Bearer {token}",
        "x-mcp-servername": target,
        "x-mcp-method": "tools/call",
        "x-mcp-toolname": "pods_list",
    }
    async with http.post(f"{svc.url}/check/mcp", headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_token_exchange_refuses_every_hostile_token_before_keycloak(
    http: aiohttp.ClientSession,
    token_service: RunningService,
    local_issuer: LocalIssuer,
    catalogue: dict[str, str],
    keycloak: kc.Keycloak,
) -> None:
    # Controls: a valid token of the local issuer passes validation, so every refusal below is
    # the token's fault; a real user token makes exactly one Keycloak call (the counter counts).
    status, body, _ = await _te_check(
        http, token_service, local_issuer.token(aud=[LOCAL_AUDIENCE]), "mcpBroker"
    )
    assert status == 200, body
    sts_before = token_service.sts_calls()
    user = await keycloak.auser_token("mcp", "mcp")  # type: ignore[attr-defined]
    status, body, _ = await _te_check(http, token_service, user)
    assert status == 200, body
    assert token_service.sts_calls() == sts_before + 1

    sts_before = token_service.sts_calls()
    jwks_before = local_issuer.hits["jwks"]
    reasons: dict[str, str] = {}
    for kind, token in catalogue.items():
        status, body, headers = await _te_check(http, token_service, token)
        _assert_refused(kind, status, body, headers, token)
        reasons[kind] = json.loads(body)["reason"] if status == 401 else f"HTTP {status}"
    assert token_service.sts_calls() == sts_before, "a hostile token reached Keycloak"
    assert local_issuer.hits["jwks"] - jwks_before <= 1, "unknown kid refetch not rate-limited"
    leak_scan.record_output("token exchange refusal reasons", json.dumps(reasons, indent=1))
    # Specific, token-free reasons for the classic attacks.
    assert "alg 'none'" in reasons["alg none"]
    assert (
        "symmetric algorithm HS256 refused" in reasons["HS256 signed with the issuer's public key"]
    )
    assert reasons["expired"] == "token expired"
    assert "not yet valid" in reasons["not yet valid (nbf)"]
    assert "not trusted" in reasons["wrong issuer (valid token of an untrusted issuer)"]
    assert "audience" in reasons["wrong audience"]
    assert "unknown" in reasons["unknown kid"]
    async with http.get(f"{token_service.url}/healthz") as resp:
        assert resp.status == 200


async def test_unknown_kid_flood_refetches_jwks_at_most_once(
    http: aiohttp.ClientSession, token_service: RunningService, local_issuer: LocalIssuer
) -> None:
    jwks_before = local_issuer.hits["jwks"]
    claims = local_issuer.claims(aud=[LOCAL_AUDIENCE])
    attacker = new_rsa()
    for i in range(25):
        token = local_issuer.sign(claims, key=attacker, kid=f"flood-{i}")
        status, body, _ = await _te_check(http, token_service, token)
        assert status == 401, body
        assert f"'flood-{i}' is unknown" in json.loads(body)["reason"]
    assert local_issuer.hits["jwks"] - jwks_before <= 1


async def test_facade_refuses_hostile_subject_tokens_before_keycloak(
    http: aiohttp.ClientSession, token_service: RunningService, catalogue: dict[str, str]
) -> None:
    sts_before = token_service.sts_calls()
    auth = aiohttp.BasicAuth(FACADE_CLIENT_ID, FACADE_CLIENT_SECRET)
    for kind, token in catalogue.items():
        form = {
            "grant_type": GRANT,
            "subject_token": token,
            "subject_token_type": ACCESS,
            "audience": BACKEND_AUDIENCE,
        }
        async with http.post(f"{token_service.url}/token", data=form, auth=auth) as resp:
            text = await resp.text()
            assert resp.status == 400, (kind, resp.status, text[:300])
            body = json.loads(text)
            assert body["error"] == "invalid_request", (kind, body)
            assert body["error_description"].startswith("invalid subject_token"), (kind, body)
            assert token not in text
    assert token_service.sts_calls() == sts_before


def _policy_headers(token: str, tool: str = "pods_list") -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": tool,
    }


def _call_body(tool: str) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    ).encode()


async def test_policy_refuses_every_hostile_token_before_the_engine(
    http: aiohttp.ClientSession,
    policy_service: RunningPolicy,
    catalogue: dict[str, str],
    keycloak: kc.Keycloak,
) -> None:
    engine = "policy_engine_seconds_count"
    user = await keycloak.auser_token("mcp", "mcp")  # type: ignore[attr-defined]
    before = metric_total(await metrics_text(http, policy_service.url), engine)
    async with http.post(
        f"{policy_service.url}/check/mcp",
        headers=_policy_headers(user),
        data=_call_body("pods_list"),
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert metric_total(await metrics_text(http, policy_service.url), engine) == before + 1

    before = metric_total(await metrics_text(http, policy_service.url), engine)
    for kind, token in catalogue.items():
        async with http.post(
            f"{policy_service.url}/check/mcp",
            headers=_policy_headers(token, "pods_delete"),
            data=_call_body("pods_delete"),
        ) as resp:
            _assert_refused(kind, resp.status, await resp.text(), resp.headers, token)
        if kind == OVERSIZED:
            continue
        decide = {"method": "tools/call", "server": SERVER, "tool": "pods_delete", "token": token}
        async with http.post(f"{policy_service.url}/v1/decide", json=decide) as resp:
            text = await resp.text()
            assert resp.status == 401, (kind, resp.status, text[:300])
            assert json.loads(text)["allow"] is False
            assert token not in text
    assert metric_total(await metrics_text(http, policy_service.url), engine) == before
    log_text = policy_service.decision_log.read_text()
    assert all(t not in log_text for t in catalogue.values())


async def test_gateway_refuses_every_hostile_token_before_any_upstream(
    local_gateway: Any, catalogue: dict[str, str]
) -> None:
    """Through Envoy and the real MCP Gateway: the router, then token exchange and policy as
    ext_authz filters, then the backend. Nothing reaches Keycloak's token endpoint (token service
    STS counter) or the backend (tool calls), whether the session's hairpin initialize to the
    server is done (the call's own token check answers 401 + challenge) or not (the hairpin
    carries the hostile token through the same check and fails: the router answers 401)."""
    import httpx2

    from tests.e2e.mcp_http import open_session
    from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE

    backend = local_gateway.services["backend"].url
    tx = local_gateway.services["token-exchange"].url
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": local_gateway.tool("pods_list_in_namespace"),
            "arguments": {"namespace": DEMO_NAMESPACE},
        },
    }
    user = await asyncio.to_thread(local_gateway.user_token, "mcp")
    warm = await open_session(local_gateway.mcp_url, user)
    async with httpx2.AsyncClient(timeout=60) as http:

        async def metric(url: str, name: str) -> float:
            return metric_total((await http.get(f"{url}/metrics")).text, name)

        async def call(token: str, session_id: str) -> httpx2.Response:
            return await http.post(
                local_gateway.mcp_url,
                json=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                    "Mcp-Session-Id": session_id,
                    "MCP-Protocol-Version": "2025-11-25",
                },
            )

        # A real user's session whose hairpin to server A is done.
        assert (await call(user, warm)).status_code == 200
        tools_before = await metric(backend, "kmg_backend_tool_calls_total")
        sts_before = await metric(tx, "token_exchange_sts_calls_total")
        statuses: dict[str, list[int]] = {}
        for kind, token in catalogue.items():
            fresh = await open_session(local_gateway.mcp_url, user)  # no hairpin yet
            for session_id in (warm, fresh):
                resp = await call(token, session_id)
                statuses.setdefault(kind, []).append(resp.status_code)
                assert token not in resp.text, kind
                if kind == OVERSIZED:
                    assert resp.status_code in (400, 401, 431), (kind, resp.status_code)
                    continue
                assert resp.status_code == 401, (kind, resp.status_code, resp.text[:300])
                if session_id == warm:
                    assert resp.headers.get("www-authenticate", "").startswith("Bearer"), kind
                else:
                    assert "failed to create session for mcp server" in resp.text, kind
        leak_scan.record_output("gateway statuses", json.dumps(statuses))
        assert await metric(backend, "kmg_backend_tool_calls_total") == tools_before
        assert await metric(tx, "token_exchange_sts_calls_total") == sts_before
        # Control: the real user token goes all the way (the counters do count).
        assert (await call(user, warm)).status_code == 200
        assert await metric(backend, "kmg_backend_tool_calls_total") == tools_before + 1
