"""The token exchange service against the testbed's real Keycloak (realms ``mcp``, ``cluster-b``).

Order matters only for the last test, which stops and restarts Keycloak.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio.client.exceptions import ApiException

from tests.gateway_plugins.common.issuer import new_rsa
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    CLUSTER_B_TARGET,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    REFUSED_TARGET,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_CLUSTER_B, REALM_MCP
from tests.testbed.keycloak import decode_jwt

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
USER_ID_MCP = (
    "0b3c7a52-6d0e-4c0f-9a51-6d6370000001"  # fixed id in manifests/keycloak/realm-mcp.json
)


@pytest.fixture(scope="module")
async def service(
    keycloak: kc.Keycloak, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    settings = service_settings(keycloak, tmp_path_factory.mktemp("te-secrets"))
    async with running_service(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _check(
    http: aiohttp.ClientSession, service: RunningService, token: str | None, target: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {
        "x-mcp-servername": target,
        "x-mcp-method": "tools/call",
        "host": "gw.example",
        **CALLER_HEADERS,
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with http.post(f"{service.url}/check/mcp", headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def _facade(
    http: aiohttp.ClientSession,
    service: RunningService,
    form: dict[str, str],
    *,
    client: tuple[str, str] = (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
) -> tuple[int, dict[str, Any]]:
    auth = aiohttp.BasicAuth(*client)
    async with http.post(f"{service.url}/token", data=form, auth=auth) as resp:
        return resp.status, await resp.json()


def _issued(headers: dict[str, str]) -> str:
    value = headers["Authorization"]
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


async def _user_token(keycloak: kc.Keycloak, username: str, password: str, **kw: Any) -> str:
    return await asyncio.to_thread(keycloak.user_token, username, password, **kw)


# -- Keycloak admin events: the independent count of exchanges Keycloak performed ------------------
def _admin(keycloak: kc.Keycloak, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(  # noqa: S310 - testbed URL
        f"{keycloak.url}/admin/realms/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {keycloak.admin_token()}",
            "Content-Type": "application/json",
        },
        method=method,
    )
    with urllib.request.urlopen(req, timeout=30, context=keycloak.ssl_context()) as resp:  # noqa: S310
        raw = resp.read()
    return json.loads(raw) if raw else None


def _enable_exchange_events(keycloak: kc.Keycloak) -> None:
    config = _admin(keycloak, "GET", f"{REALM_MCP}/events/config")
    types = set(config.get("enabledEventTypes") or []) | {"TOKEN_EXCHANGE", "TOKEN_EXCHANGE_ERROR"}
    config.update({"eventsEnabled": True, "enabledEventTypes": sorted(types)})
    _admin(keycloak, "PUT", f"{REALM_MCP}/events/config", config)


def _exchange_events(keycloak: kc.Keycloak, user_id: str, session_id: str) -> int:
    query = urllib.parse.urlencode({"type": "TOKEN_EXCHANGE", "user": user_id, "max": 1000})
    events = _admin(keycloak, "GET", f"{REALM_MCP}/events?{query}")
    return sum(1 for e in events if e.get("sessionId") == session_id)


# -- tests ---------------------------------------------------------------------------------------
async def test_exchange_success_and_cache_hit(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await _user_token(keycloak, "mcp", "mcp")
    assert len(decode_jwt(user_token)["aud"]) > 1  # Keycloak's broad default audiences
    before = service.sts_calls()
    status, headers, body = await _check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200, body
    assert body == {"allow": True, "exchanged": True}
    exchanged = _issued(headers)
    claims = decode_jwt(exchanged)
    assert claims["aud"] == BACKEND_AUDIENCE
    assert claims["iss"] == keycloak.issuer(REALM_MCP)
    assert claims["preferred_username"] == "mcp"
    assert claims["azp"] == keycloak.gateway_client_id
    assert "pods_list" in claims["resource_access"][BACKEND_AUDIENCE]["roles"]
    assert service.sts_calls() == before + 1
    # The validator accepts what Keycloak issued (signature, issuer, expiry).
    assert (await service.runtime.require().validator.validate(exchanged))["sub"] == claims["sub"]

    status, headers, _ = await _check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200
    assert _issued(headers) == exchanged  # served from the cache
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
    user_token = await _user_token(keycloak, "mcp", "mcp")
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
        status, body = await _facade(http, service, form)
        assert service.sts_calls() == 0
    assert status == 200, body
    assert body["access_token"] == narrow


async def test_a_token_exchanged_for_the_backend_is_refused_at_the_check(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Issue 14 replay: a token the gateway exchanged for the backend (leaked from the backend,
    its logs or the path behind the gateway) used to pass the check unchanged (its audience was
    "already right"). The check accepts only tokens addressed to the gateway now."""
    user_token = await _user_token(keycloak, "viewer", "viewer")
    status, headers, body = await _check(http, service, user_token, BACKEND_AUDIENCE)
    assert status == 200, body
    exchanged = _issued(headers)
    assert decode_jwt(exchanged)["aud"] == BACKEND_AUDIENCE
    before = service.sts_calls()
    for target in (BACKEND_AUDIENCE, "mcpBroker"):
        status, headers, body = await _check(http, service, exchanged, target)
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
    status, answer = await _facade(http, service, form)
    assert status == 400, answer
    assert answer["error"] == "invalid_request"
    assert "mcp-gateway" in answer["error_description"]
    assert service.sts_calls() == before


async def test_a_token_of_another_client_is_refused(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """Issue 14: a genuine realm-mcp token issued to another client (admin-cli: no audience of
    the gateway) was accepted by the check. The validation audiences refuse it now."""
    other = await _user_token(keycloak, "viewer", "viewer", client_id="admin-cli")
    assert decode_jwt(other)["azp"] == "admin-cli"
    before = service.sts_calls()
    for target in (BACKEND_AUDIENCE, "mcpBroker"):
        status, headers, body = await _check(http, service, other, target)
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
    viewer = await _user_token(keycloak, "viewer", "viewer")
    before = service.sts_calls()
    status, headers, body = await _check(http, service, viewer, CLUSTER_B_TARGET)
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


def _forged_tokens(keycloak: kc.Keycloak, real: str) -> dict[str, str | None]:
    header_b64, payload_b64, signature = real.split(".")
    claims = decode_jwt(real)
    kid = jwt.get_unverified_header(real)["kid"]
    tampered = dict(claims, preferred_username="admin")
    tampered_b64 = base64.urlsafe_b64encode(json.dumps(tampered).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    jwks = json.loads(
        urllib.request.urlopen(  # noqa: S310 - testbed URL
            keycloak.jwks_url(REALM_MCP), timeout=30, context=keycloak.ssl_context()
        ).read()
    )
    public_jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    public_pem = jwt.PyJWK(public_jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    return {
        "missing": None,
        "opaque": "2YotnFZFEjr1zCsicMWpAA",
        "tampered payload": f"{header_b64}.{tampered_b64}.{signature}",
        "alg none": f"{none_header}.{payload_b64}.",
        "hs256 with the realm's public key": _hs256(claims, kid, public_pem),
        "forged signature, realm kid": jwt.encode(claims, new_rsa(), "RS256", {"kid": kid}),
        "unknown kid": jwt.encode(claims, new_rsa(), "RS256", {"kid": "not-a-kid"}),
        "expired (forged)": jwt.encode(
            dict(claims, iat=now - 900, exp=now - 600), new_rsa(), "RS256", {"kid": kid}
        ),
    }


def _hs256(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_bad_tokens_get_401_before_any_keycloak_call(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    real = await _user_token(keycloak, "mcp", "mcp")
    other_realm = await _user_token(keycloak, "mcp", "mcp", realm=REALM_CLUSTER_B)
    tokens = _forged_tokens(keycloak, real)
    tokens["token of an untrusted realm (cluster-b)"] = other_realm
    before = service.sts_calls()
    for kind, token in tokens.items():
        status, headers, body = await _check(http, service, token, BACKEND_AUDIENCE)
        assert status == 401, (kind, body)
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith(
            'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource"'
        ), kind
        assert body["allow"] is False
        if token:
            assert token not in json.dumps(body)
            assert token not in challenge
    assert service.sts_calls() == before


async def test_keycloak_id_and_refresh_tokens_are_refused(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """An ID token (scope openid) is signed by the trusted realm with its usual key: only its
    type tells it apart. It must not pass for an access token, at /check or at the facade."""
    body = await asyncio.to_thread(
        keycloak.post_form,
        keycloak.token_url(REALM_MCP),
        {
            "grant_type": "password",
            "username": "mcp",
            "password": "mcp",
            "client_id": kc.TEST_CLIENT_ID,
            "scope": "openid",
        },
        what="password grant with an ID token",
    )
    access, id_token, refresh = body["access_token"], body["id_token"], body["refresh_token"]
    assert decode_jwt(access)["typ"] == "Bearer"
    assert decode_jwt(id_token)["typ"] == "ID"
    assert decode_jwt(refresh)["typ"] == "Refresh"
    assert jwt.get_unverified_header(id_token)["kid"] == jwt.get_unverified_header(access)["kid"]
    before = service.sts_calls()

    status, headers, answer = await _check(http, service, id_token, BACKEND_AUDIENCE)
    assert status == 401, answer
    assert answer["reason"].startswith("not an access token (typ 'ID'"), answer
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert id_token not in json.dumps(answer)
    status, _, answer = await _check(http, service, refresh, BACKEND_AUDIENCE)
    assert status == 401, answer  # Keycloak signs refresh tokens with HS512 or types them Refresh
    assert "symmetric algorithm" in answer["reason"] or "not an access token" in answer["reason"]

    form = {
        "grant_type": GRANT,
        "subject_token": id_token,
        "subject_token_type": ACCESS,
        "audience": BACKEND_AUDIENCE,
    }
    status, answer = await _facade(http, service, form)
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert "not an access token" in answer["error_description"]
    assert service.sts_calls() == before  # refused before Keycloak

    # Control: the access token of the same grant passes.
    status, _, answer = await _check(http, service, access, BACKEND_AUDIENCE)
    assert status == 200, answer


def _short_lived_user_token(keycloak: kc.Keycloak, seconds: int) -> str:
    """A real Keycloak token living ``seconds``, from a throw-away public client of its own (the
    shared clients stay untouched)."""
    client_id = f"te-short-lived-{uuid.uuid4().hex[:8]}"
    _admin(
        keycloak,
        "POST",
        f"{REALM_MCP}/clients",
        {
            "clientId": client_id,
            "publicClient": True,
            "directAccessGrantsEnabled": True,
            "standardFlowEnabled": False,
            "attributes": {"access.token.lifespan": str(seconds)},
        },
    )
    try:
        return keycloak.user_token("mcp", "mcp", client_id=client_id)
    finally:
        created = _admin(keycloak, "GET", f"{REALM_MCP}/clients?clientId={client_id}")
        for client in created:
            _admin(keycloak, "DELETE", f"{REALM_MCP}/clients/{client['id']}")


async def test_really_expired_keycloak_token_gets_401(
    keycloak: kc.Keycloak, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = await asyncio.to_thread(_short_lived_user_token, keycloak, 1)
    claims = decode_jwt(token)
    assert claims["exp"] - claims["iat"] <= 2
    settings = service_settings(keycloak, tmp_path)
    settings.validation = settings.validation.model_copy(update={"leeway_s": 0.0})
    async with running_service(settings) as service:
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.5)
        status, headers, body = await _check(http, service, token, BACKEND_AUDIENCE)
        assert status == 401, body
        assert body["reason"] == "token expired"
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert service.sts_calls() == 0


async def test_keycloak_refusing_the_audience_gives_403(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await _user_token(keycloak, "mcp", "mcp")
    status, _, body = await _check(http, service, user_token, REFUSED_TARGET)
    assert status == 403
    assert body["allow"] is False
    assert body["error"] == "exchange_refused"
    assert "Audience not found" in body["reason"]  # Keycloak's own error_description
    assert user_token not in json.dumps(body)
    status, _, body = await _check(http, service, user_token, "not-configured")
    assert status == 403
    assert body["error"] == "unknown_target"


async def test_100_concurrent_identical_requests_make_one_keycloak_call(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    await asyncio.to_thread(_enable_exchange_events, keycloak)
    user_token = await _user_token(keycloak, "mcp", "mcp")
    session_id = decode_jwt(user_token)["sid"]
    before = service.sts_calls()
    results = await asyncio.gather(
        *(_check(http, service, user_token, BACKEND_AUDIENCE) for _ in range(100))
    )
    assert [status for status, _, _ in results] == [200] * 100
    assert len({_issued(headers) for _, headers, _ in results}) == 1
    assert service.sts_calls() == before + 1
    # Keycloak's own record agrees: one TOKEN_EXCHANGE event for this login session.
    events = await asyncio.to_thread(_exchange_events, keycloak, USER_ID_MCP, session_id)
    assert events == 1


async def test_two_users_never_share_a_cached_token(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    tokens = {
        "mcp": await _user_token(keycloak, "mcp", "mcp"),
        "viewer": await _user_token(keycloak, "viewer", "viewer"),
    }
    for _ in range(2):  # second round: both from the cache
        results = await asyncio.gather(
            *(_check(http, service, t, BACKEND_AUDIENCE) for t in tokens.values())
        )
        issued = {user: _issued(h) for user, (_, h, _) in zip(tokens, results, strict=True)}
        assert issued["mcp"] != issued["viewer"]
        for user, token in issued.items():
            assert decode_jwt(token)["preferred_username"] == user
    viewer_roles = decode_jwt(issued["viewer"])["resource_access"][BACKEND_AUDIENCE]["roles"]
    assert "pods_delete" not in viewer_roles


async def test_broker_requests_pass_the_validated_token_unchanged(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await _user_token(keycloak, "mcp", "mcp")
    status, headers, body = await _check(http, service, user_token, "mcpBroker")
    assert status == 200
    assert body == {"allow": True, "exchanged": False}
    assert "Authorization" not in headers


async def test_facade_rfc8693_exchange_and_errors(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await _user_token(keycloak, "mcp", "mcp")
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": BACKEND_AUDIENCE,
    }
    status, body = await _facade(http, service, form)
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "Bearer"
    assert 200 < body["expires_in"] <= 300
    assert decode_jwt(body["access_token"])["aud"] == BACKEND_AUDIENCE

    cases: list[tuple[dict[str, str], tuple[str, str], int, str]] = [
        (form, (FACADE_CLIENT_ID, "wrong"), 401, "invalid_client"),
        (
            dict(form, grant_type="client_credentials"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "unsupported_grant_type",
        ),
        (
            dict(form, subject_token="not-a-jwt"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_request",
        ),
        (
            dict(form, subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_request",
        ),
        (
            dict(form, audience="nowhere"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_target",
        ),
        (
            dict(form, audience=REFUSED_TARGET),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_target",
        ),
        (dict(form, scope="admin"), (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET), 400, "invalid_scope"),
    ]
    for case_form, client, want_status, want_error in cases:
        status, body = await _facade(http, service, case_form, client=client)
        assert (status, body["error"]) == (want_status, want_error), body
        assert user_token not in json.dumps(body)

    # client_secret_post: credentials in the form instead of HTTP Basic.
    posted = dict(form, client_id=FACADE_CLIENT_ID, client_secret=FACADE_CLIENT_SECRET)
    async with http.post(f"{service.url}/token", data=posted) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
    async with http.post(f"{service.url}/token", data=form) as resp:  # no credentials at all
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="token-exchange"'
        assert (await resp.json())["error"] == "invalid_client"


async def test_cross_domain_token_for_cluster_b(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await _user_token(keycloak, "mcp", "mcp")
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": CLUSTER_B_TARGET,
    }
    before = service.sts_calls("cluster-b")
    status, body = await _facade(http, service, form)
    assert status == 200, body
    claims = decode_jwt(body["access_token"])
    assert claims["iss"] == keycloak.issuer(REALM_CLUSTER_B)
    assert claims["aud"] == "cluster-b"
    assert claims["preferred_username"] == "mcp"
    assert service.sts_calls("cluster-b") == before + 1
    status, again = await _facade(http, service, form)
    assert again["access_token"] == body["access_token"]  # cached: hop 2's jti is single-use
    assert service.sts_calls("cluster-b") == before + 1


async def test_cluster_b_api_server_sees_the_realm_mcp_user(
    keycloak: kc.Keycloak,
    service: RunningService,
    http: aiohttp.ClientSession,
    cluster_b: Cluster,
) -> None:
    """Cross-domain at the service level: cluster B trusts only realm cluster-b, yet the user of
    realm mcp reaches it, under the same username, with the token this service hands out."""
    user_token = await _user_token(keycloak, "mcp", "mcp")
    with pytest.raises(ApiException) as refused:
        await cluster_b.whoami(user_token)  # realm mcp's own token: not trusted by cluster B
    assert refused.value.status == 401
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": CLUSTER_B_TARGET,
    }
    status, body = await _facade(http, service, form)
    assert status == 200, body
    user = await cluster_b.wait_token_accepted(body["access_token"], within=30)
    assert user.username == "mcp"
    assert "mcp-users" in (user.groups or [])


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


def _freeze(keycloak: kc.Keycloak, sig: signal.Signals) -> None:
    """SIGSTOP/SIGCONT Keycloak's process group: a real hung server (accepts, never answers)."""
    proc = keycloak._proc.proc if keycloak._proc is not None else None
    assert proc is not None, "Keycloak is not running"
    os.killpg(os.getpgid(proc.pid), sig)


async def test_slow_keycloak_times_out_with_503_and_recovers(
    keycloak: kc.Keycloak, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = service_settings(keycloak, tmp_path)
    settings.sts = {
        name: sts.model_copy(update={"timeout_s": 1.0}) for name, sts in settings.sts.items()
    }
    users = [await _user_token(keycloak, u, u) for u in ("mcp", "viewer")]
    async with running_service(settings) as service:
        status, _, _ = await _check(http, service, users[0], BACKEND_AUDIENCE)
        assert status == 200
        _freeze(keycloak, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, _, body = await _check(http, service, users[1], BACKEND_AUDIENCE)
            waited = time.monotonic() - started
            assert status == 503, body
            assert "did not answer within 1s" in body["reason"]
            assert waited < 5
            status, _, _ = await _check(http, service, users[0], BACKEND_AUDIENCE)
            assert status == 200  # cached
        finally:
            _freeze(keycloak, signal.SIGCONT)
        await asyncio.sleep(1.1)  # let the breaker's cooldown pass if it opened
        status, headers, body = await _check(http, service, users[1], BACKEND_AUDIENCE)
        assert status == 200, body
        assert decode_jwt(_issued(headers))["preferred_username"] == "viewer"


async def test_keycloak_outage_503_cached_tokens_keep_working_then_recovery(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    cached_user = await _user_token(keycloak, "mcp", "mcp")
    uncached_user = await _user_token(keycloak, "viewer", "viewer")
    status, headers, _ = await _check(http, service, cached_user, BACKEND_AUDIENCE)
    assert status == 200
    cached_token = _issued(headers)

    await asyncio.to_thread(keycloak.stop)
    try:
        status, _, body = await _check(http, service, uncached_user, BACKEND_AUDIENCE)
        assert status == 503
        assert body["error"] == "token_service_unavailable"
        assert "unreachable" in body["reason"] or "times in a row" in body["reason"]
        status, headers, _ = await _check(http, service, cached_user, BACKEND_AUDIENCE)
        assert status == 200
        assert _issued(headers) == cached_token
        async with http.get(f"{service.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["jwks"] == "ok"  # keys stay cached
    finally:
        await asyncio.to_thread(keycloak.start)

    deadline = time.monotonic() + 30
    while True:
        status, headers, body = await _check(http, service, uncached_user, BACKEND_AUDIENCE)
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status == 200, body
    assert decode_jwt(_issued(headers))["preferred_username"] == "viewer"


def test_secrets_are_files_not_config(tmp_path: Path, keycloak: kc.Keycloak) -> None:
    settings = service_settings(keycloak, tmp_path)
    dumped = settings.model_dump_json()
    assert keycloak.gateway_client_secret not in dumped
    assert FACADE_CLIENT_SECRET not in dumped
