"""Tokens the token exchange service refuses before (or instead of) any exchange, with the
testbed's real Keycloak: forged, foreign-key, HS256 and ``none`` tokens, Keycloak's ID and refresh
tokens, an expired token (401), and an audience Keycloak refuses to exchange (403).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from tests.gateway_plugins.common.issuer import new_rsa
from tests.gateway_plugins.token_exchange.checks import (
    ACCESS,
    GRANT,
    fetch_user_token,
    keycloak_admin,
    post_check,
    post_token,
)
from tests.gateway_plugins.token_exchange.running import (
    REFUSED_TARGET,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_CLUSTER_B, REALM_MCP
from tests.testbed.keycloak import decode_jwt


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
    real = await fetch_user_token(keycloak, "mcp", "mcp")
    other_realm = await fetch_user_token(keycloak, "mcp", "mcp", realm=REALM_CLUSTER_B)
    tokens = _forged_tokens(keycloak, real)
    tokens["token of an untrusted realm (cluster-b)"] = other_realm
    before = service.sts_calls()
    for kind, token in tokens.items():
        status, headers, body = await post_check(http, service, token, BACKEND_AUDIENCE)
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

    status, headers, answer = await post_check(http, service, id_token, BACKEND_AUDIENCE)
    assert status == 401, answer
    assert answer["reason"].startswith("not an access token (typ 'ID'"), answer
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert id_token not in json.dumps(answer)
    status, _, answer = await post_check(http, service, refresh, BACKEND_AUDIENCE)
    assert status == 401, answer  # Keycloak signs refresh tokens with HS512 or types them Refresh
    assert "symmetric algorithm" in answer["reason"] or "not an access token" in answer["reason"]

    form = {
        "grant_type": GRANT,
        "subject_token": id_token,
        "subject_token_type": ACCESS,
        "audience": BACKEND_AUDIENCE,
    }
    status, answer = await post_token(http, service, form)
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert "not an access token" in answer["error_description"]
    assert service.sts_calls() == before  # refused before Keycloak

    # Control: the access token of the same grant passes.
    status, _, answer = await post_check(http, service, access, BACKEND_AUDIENCE)
    assert status == 200, answer


def _short_lived_user_token(keycloak: kc.Keycloak, seconds: int) -> str:
    """A real Keycloak token living ``seconds``, from a throw-away public client of its own (the
    shared clients stay untouched)."""
    client_id = f"te-short-lived-{uuid.uuid4().hex[:8]}"
    keycloak_admin(
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
        created = keycloak_admin(keycloak, "GET", f"{REALM_MCP}/clients?clientId={client_id}")
        for client in created:
            keycloak_admin(keycloak, "DELETE", f"{REALM_MCP}/clients/{client['id']}")


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
        status, headers, body = await post_check(http, service, token, BACKEND_AUDIENCE)
        assert status == 401, body
        assert body["reason"] == "token expired"
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert service.sts_calls() == 0


async def test_keycloak_refusing_the_audience_gives_403(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    status, _, body = await post_check(http, service, user_token, REFUSED_TARGET)
    assert status == 403
    assert body["allow"] is False
    assert body["error"] == "exchange_refused"
    assert "Audience not found" in body["reason"]  # Keycloak's own error_description
    assert user_token not in json.dumps(body)
    status, _, body = await post_check(http, service, user_token, "not-configured")
    assert status == 403
    assert body["error"] == "unknown_target"
