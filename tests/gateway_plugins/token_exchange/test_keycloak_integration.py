"""The token exchange service's check against the testbed's real Keycloak (realms ``mcp``,
``cluster-b``): exchanges and their cache, counted by Keycloak's own admin events; the targets
the check issues. Refused tokens are in ``test_token_refusals.py``, the ``/token`` facade and
cross-domain tokens in ``test_facade.py``, Keycloak outages in
``test_keycloak_outage.py``.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp

from tests.gateway_plugins.token_exchange.checks import (
    ACCESS,
    GRANT,
    fetch_user_token,
    issued_token,
    keycloak_admin,
    post_check,
    post_token,
)
from tests.gateway_plugins.token_exchange.running import (
    CLUSTER_B_TARGET,
    FACADE_CLIENT_SECRET,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP
from tests.testbed.keycloak import decode_jwt

USER_ID_MCP = (
    "0b3c7a52-6d0e-4c0f-9a51-6d6370000001"  # fixed id in manifests/keycloak/realm-mcp.json
)


# -- Keycloak admin events: the independent count of exchanges Keycloak performed ------------------
def _enable_exchange_events(keycloak: kc.Keycloak) -> None:
    config = keycloak_admin(keycloak, "GET", f"{REALM_MCP}/events/config")
    types = set(config.get("enabledEventTypes") or []) | {"TOKEN_EXCHANGE", "TOKEN_EXCHANGE_ERROR"}
    config.update({"eventsEnabled": True, "enabledEventTypes": sorted(types)})
    keycloak_admin(keycloak, "PUT", f"{REALM_MCP}/events/config", config)


def _exchange_events(keycloak: kc.Keycloak, user_id: str, session_id: str) -> int:
    query = urllib.parse.urlencode({"type": "TOKEN_EXCHANGE", "user": user_id, "max": 1000})
    events = keycloak_admin(keycloak, "GET", f"{REALM_MCP}/events?{query}")
    return sum(1 for e in events if e.get("sessionId") == session_id)


async def test_exchange_success_and_cache_hit(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    assert len(decode_jwt(user_token)["aud"]) > 1  # Keycloak's broad default audiences
    before = service.sts_calls()
    status, headers, body = await post_check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200, body
    assert body == {"allow": True, "exchanged": True}
    exchanged = issued_token(headers)
    claims = decode_jwt(exchanged)
    assert claims["aud"] == BACKEND_AUDIENCE
    assert claims["iss"] == keycloak.issuer(REALM_MCP)
    assert claims["preferred_username"] == "mcp"
    assert claims["azp"] == keycloak.gateway_client_id
    assert "pods_list" in claims["resource_access"][BACKEND_AUDIENCE]["roles"]
    assert service.sts_calls() == before + 1
    # The validator accepts what Keycloak issued (signature, issuer, expiry).
    assert (await service.runtime.require().validator.validate(exchanged))["sub"] == claims["sub"]

    status, headers, _ = await post_check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200
    assert issued_token(headers) == exchanged  # served from the cache
    assert service.sts_calls() == before + 1


async def test_audience_already_right_needs_no_keycloak_call(
    keycloak: kc.Keycloak, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A subject token already exactly for the target (here: cluster A, at the /token facade of
    a service that accepts tokens for cluster A) goes out unchanged, without a Keycloak call."""
    settings = service_settings(keycloak, tmp_path)
    issuer = settings.validation.issuers[0]
    accepting = issuer.model_copy(update={"audiences": [*issuer.audiences, "cluster-a"]})
    settings = settings.model_copy(
        update={"validation": settings.validation.model_copy(update={"issuers": [accepting]})}
    )
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    narrow = (await asyncio.to_thread(keycloak.exchange, user_token, audience="cluster-a"))[
        "access_token"
    ]
    assert decode_jwt(narrow)["aud"] == "cluster-a"
    form = {
        "grant_type": GRANT,
        "subject_token": narrow,
        "subject_token_type": ACCESS,
        "audience": "cluster-a",
    }
    async with running_service(settings) as service:
        status, body = await post_token(http, service, form)
        assert service.sts_calls() == 0
    assert status == 200, body
    assert body["access_token"] == narrow


async def test_a_token_exchanged_for_the_backend_is_refused_at_the_check(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Issue 14 replay: a token the gateway exchanged for the backend (leaked from the backend,
    its logs or the path behind the gateway) used to pass the check unchanged (its audience was
    "already right"). The check accepts only tokens addressed to the gateway now."""
    user_token = await fetch_user_token(keycloak, "viewer", "viewer")
    status, headers, body = await post_check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200, body
    exchanged = issued_token(headers)
    assert decode_jwt(exchanged)["aud"] == BACKEND_AUDIENCE
    before = service.sts_calls()
    for target in (BACKEND_AUDIENCE, "mcpBroker"):
        status, headers, body = await post_check(http, service, exchanged, target)
        assert status == 401, (target, body)
        assert body["allow"] is False
        assert "not addressed to this gateway" in body["reason"]
        assert "mcp-gateway" in body["reason"]
        assert "Authorization" not in headers
    # The facade (the backend's and Authorino's door) refuses it for the backend too: the target
    # takes only subject tokens addressed to the gateway.
    form = {
        "grant_type": GRANT,
        "subject_token": exchanged,
        "subject_token_type": ACCESS,
        "audience": BACKEND_AUDIENCE,
    }
    status, answer = await post_token(http, service, form)
    assert status == 400, answer
    assert answer["error"] == "invalid_request"
    assert "mcp-gateway" in answer["error_description"]
    assert service.sts_calls() == before


async def test_a_token_of_another_client_is_refused(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Issue 14: a genuine realm-mcp token issued to another client (admin-cli: no audience of
    the gateway) was accepted by the check. The validation audiences refuse it now."""
    other = await fetch_user_token(keycloak, "viewer", "viewer", client_id="admin-cli")
    assert decode_jwt(other)["azp"] == "admin-cli"
    before = service.sts_calls()
    for target in (BACKEND_AUDIENCE, "mcpBroker"):
        status, headers, body = await post_check(http, service, other, target)
        assert status == 401, (target, body)
        assert "audience" in body["reason"]
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert service.sts_calls() == before


async def test_the_check_issues_no_cross_domain_token(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Issue 14: the viewer asked /check for x-mcp-servername: cluster-b and got a realm
    cluster-b token, while /token demands client credentials for the same. Cross-domain targets
    are not among ext_authz.targets: the check refuses them before any Keycloak call."""
    viewer = await fetch_user_token(keycloak, "viewer", "viewer")
    before = service.sts_calls()
    status, headers, body = await post_check(http, service, viewer, CLUSTER_B_TARGET)
    assert status == 403, body
    assert (body["allow"], body["error"]) == (False, "target_not_routable")
    assert "POST /token" in body["reason"]
    assert "Authorization" not in headers
    assert service.sts_calls() == before
    # and without the gateway's caller credential the check answers nothing at all
    async with http.post(
        f"{service.url}/check/mcp",
        headers={"authorization": f"Bearer {viewer}", "x-mcp-servername": BACKEND_AUDIENCE},
    ) as resp:
        assert resp.status == 403
        refused = await resp.json()
        assert "Authorization" not in resp.headers
    assert (refused["allow"], refused["error"]) == (False, "caller_unauthenticated")
    assert "x-kmg-caller-secret" in refused["reason"]
    assert service.sts_calls() == before


async def test_100_concurrent_identical_requests_make_one_keycloak_call(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await asyncio.to_thread(_enable_exchange_events, keycloak)
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    session_id = decode_jwt(user_token)["sid"]
    before = service.sts_calls()
    results = await asyncio.gather(
        *(post_check(http, service, user_token, BACKEND_AUDIENCE) for _ in range(100))
    )
    assert [status for status, _, _ in results] == [200] * 100
    assert len({issued_token(headers) for _, headers, _ in results}) == 1
    assert service.sts_calls() == before + 1
    # Keycloak's own record agrees: one TOKEN_EXCHANGE event for this login session.
    events = await asyncio.to_thread(_exchange_events, keycloak, USER_ID_MCP, session_id)
    assert events == 1


async def test_two_users_never_share_a_cached_token(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    tokens = {
        "mcp": await fetch_user_token(keycloak, "mcp", "mcp"),
        "viewer": await fetch_user_token(keycloak, "viewer", "viewer"),
    }
    for _ in range(2):  # second round: both from the cache
        results = await asyncio.gather(
            *(post_check(http, service, t, BACKEND_AUDIENCE) for t in tokens.values())
        )
        issued = {user: issued_token(h) for user, (_, h, _) in zip(tokens, results, strict=True)}
        assert issued["mcp"] != issued["viewer"]
        for user, token in issued.items():
            assert decode_jwt(token)["preferred_username"] == user
    viewer_roles = decode_jwt(issued["viewer"])["resource_access"][BACKEND_AUDIENCE]["roles"]
    assert "pods_delete" not in viewer_roles


async def test_broker_requests_pass_the_validated_token_unchanged(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    status, headers, body = await post_check(http, service, user_token, "mcpBroker")
    assert status == 200
    assert body == {"allow": True, "exchanged": False}
    assert "Authorization" not in headers


# After the exchanges above: the metrics show their cache hits.
async def test_readyz_reports_keycloak_and_jwks(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{service.url}/readyz") as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["checks"] == {"jwks": "ok", "sts:mcp": "ok", "sts:cluster-b": "ok"}
    async with http.get(f"{service.url}/metrics") as resp:
        text = await resp.text()
    assert "token_exchange_sts_calls_total" in text
    assert 'token_exchange_requests_total{outcome="hit"' in text


def test_secrets_are_files_not_config(tmp_path: Path, keycloak: kc.Keycloak) -> None:
    settings = service_settings(keycloak, tmp_path)
    dumped = settings.model_dump_json()
    assert keycloak.gateway_client_secret not in dumped
    assert FACADE_CLIENT_SECRET not in dumped
