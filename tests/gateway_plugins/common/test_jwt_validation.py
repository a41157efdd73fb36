"""JWT validation against a real local issuer (real keys, real JWKS over HTTP)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import (
    KEYS_UNAVAILABLE,
    InvalidToken,
    IssuerConfig,
    JWTValidator,
    ValidationUnavailable,
    looks_like_jwt,
)
from tests.gateway_plugins.common.issuer import LocalIssuer, new_ec, new_rsa


def _validator(
    issuer: LocalIssuer, session: aiohttp.ClientSession, **kwargs: object
) -> JWTValidator:
    audiences = kwargs.pop("audiences", [])
    jwks = JWKSCache(session, min_refetch_interval_s=0.0)
    config = IssuerConfig(
        issuer=issuer.issuer,
        audiences=audiences,  # type: ignore[arg-type]
        allow_any_audience=not audiences,
    )
    return JWTValidator(
        [config],
        jwks,
        **kwargs,  # type: ignore[arg-type]
    )


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _reason(validator: JWTValidator, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        await validator.validate(token)
    assert token not in info.value.reason
    return info.value.reason


async def test_valid_token_returns_claims(issuer: LocalIssuer, session: aiohttp.ClientSession):
    validator = _validator(issuer, session)
    claims = await validator.validate(issuer.token("alice"))
    assert claims["sub"] == "alice"
    assert claims["iss"] == issuer.issuer


async def test_es256_token_accepted(issuer: LocalIssuer, session: aiohttp.ClientSession):
    issuer.keys["ec-1"] = new_ec()
    validator = _validator(issuer, session)
    claims = await validator.validate(issuer.token("bob", kid="ec-1"))
    assert claims["sub"] == "bob"


async def test_expired_token_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    now = int(time.time())
    token = issuer.token(iat=now - 600, exp=now - 120)
    assert await _reason(_validator(issuer, session), token) == "token expired"


async def test_expiry_within_leeway_accepted(issuer: LocalIssuer, session: aiohttp.ClientSession):
    now = int(time.time())
    token = issuer.token(iat=now - 600, exp=now - 5)
    claims = await _validator(issuer, session, leeway_s=30.0).validate(token)
    assert claims["exp"] == now - 5


async def test_not_yet_valid_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.token(nbf=int(time.time()) + 600)
    assert "not yet valid" in await _reason(_validator(issuer, session), token)


async def test_missing_exp_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    claims = issuer.claims()
    del claims["exp"]
    assert await _reason(_validator(issuer, session), issuer.sign(claims)) == (
        "token has no 'exp' claim"
    )


async def test_untrusted_issuer_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.token(iss="https://evil.example/realms/mcp")
    reason = await _reason(_validator(issuer, session), token)
    assert reason == "issuer https://evil.example/realms/mcp is not trusted"
    assert issuer.hits["jwks"] == 0  # refused before any key fetch


async def test_alg_none_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = f"{_b64({'alg': 'none', 'kid': 'rsa-1'})}.{_b64(issuer.claims())}."
    assert "alg 'none'" in await _reason(_validator(issuer, session), token)


async def test_hs256_with_public_key_as_secret_refused(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    # The classic key-confusion attack: HMAC "signed" with the issuer's public key PEM.
    pem = (
        issuer.keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    payload = _b64(issuer.claims())
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    assert "symmetric algorithm HS256 refused" in await _reason(_validator(issuer, session), token)


async def test_forged_signature_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.sign(issuer.claims(), kid="rsa-1", key=new_rsa())
    assert await _reason(_validator(issuer, session), token) == "signature verification failed"


async def test_unknown_kid_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.sign(issuer.claims(), kid="nope", key=new_rsa())
    assert "signing key 'nope' is unknown" in await _reason(_validator(issuer, session), token)


async def test_alg_not_matching_key_type_refused(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    token = issuer.sign(issuer.claims(), kid="rsa-1", key=new_ec(), alg="ES256")
    assert "does not match" in await _reason(_validator(issuer, session), token)


async def test_disallowed_algorithm_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.sign(issuer.claims(), kid="rsa-1", alg="RS512")
    assert "algorithm RS512 not allowed" in await _reason(_validator(issuer, session), token)


async def test_oversized_token_refused(issuer: LocalIssuer, session: aiohttp.ClientSession):
    token = issuer.token(padding="x" * 20000)
    assert "larger than" in await _reason(_validator(issuer, session), token)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "no bearer token"),
        ("opaque-token-value", "not a JWT"),
        ("eyJhbGciOi.x", "not a JWT"),
        ("eyJub3RqcyJ9.eyJ4Ijox.c2ln", "malformed token header"),
    ],
)
async def test_malformed_tokens_refused(
    issuer: LocalIssuer, session: aiohttp.ClientSession, token: str, expected: str
):
    with pytest.raises(InvalidToken) as info:
        await _validator(issuer, session).validate(token)
    assert expected in info.value.reason


async def test_audience_enforced_when_configured(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    validator = _validator(issuer, session, audiences=["gateway"])
    assert (await validator.validate(issuer.token(aud="gateway")))["aud"] == "gateway"
    assert "audience" in await _reason(validator, issuer.token(aud="other"))


async def test_issuer_down_without_keys_is_unavailable_not_invalid(
    issuer: LocalIssuer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    issuer.failing = True
    validator = _validator(issuer, session)
    with (
        caplog.at_level(logging.WARNING, logger="gateway_plugins.common.jwt_validation"),
        pytest.raises(ValidationUnavailable) as info,
    ):
        await validator.validate(issuer.token())
    # The caller (not authenticated yet) gets a generic message: no internal URL, no error.
    assert str(info.value) == KEYS_UNAVAILABLE
    assert "127.0.0.1" not in str(info.value)
    # The operator gets the detail in the log (and on the exception, for logging only).
    assert "HTTP 503" in info.value.detail
    assert issuer.issuer in info.value.detail
    assert "HTTP 503" in caplog.text
    assert f"{issuer.issuer}/.well-known/openid-configuration" in caplog.text


def test_issuer_without_audiences_is_refused_at_load() -> None:
    """Issue 14: an issuer without audiences accepted tokens issued to any client of the realm
    (admin-cli's included). It is refused now, naming the settings that fix it."""
    with pytest.raises(ValidationError) as refused:
        IssuerConfig(issuer="https://kc.example/realms/mcp")
    message = str(refused.value)
    assert "'audiences' is empty" in message
    assert "admin-cli" in message
    assert "allow_any_audience: true" in message


async def test_allow_any_audience_is_explicit_and_warned_about(
    issuer: LocalIssuer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="gateway_plugins.common.jwt_validation"):
        permissive = _validator(issuer, session)
    assert f"issuer {issuer.issuer} has no audiences and allow_any_audience is set" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway_plugins.common.jwt_validation"):
        _validator(issuer, session, audiences=["gateway"])
    assert "allow_any_audience" not in caplog.text
    # Development setting: any audience passes.
    assert (await permissive.validate(issuer.token(aud="anything")))["aud"] == "anything"


@pytest.mark.parametrize("typ", ["Bearer", "bearer", "at+jwt", None])
async def test_access_token_typ_claims_accepted(
    issuer: LocalIssuer, session: aiohttp.ClientSession, typ: str | None
):
    claims = await _validator(issuer, session).validate(issuer.token(typ=typ))
    assert claims.get("typ") == typ


@pytest.mark.parametrize("typ", ["ID", "Refresh", "Offline", "Logout", "Serialized-ID", "", 7])
async def test_non_access_token_typ_claims_refused(
    issuer: LocalIssuer, session: aiohttp.ClientSession, typ: object
):
    reason = await _reason(_validator(issuer, session), issuer.token(typ=typ))
    assert reason.startswith("not an access token"), reason


@pytest.mark.parametrize("header_typ", ["JWT", "at+jwt", "application/at+jwt"])
async def test_access_token_typ_headers_accepted(
    issuer: LocalIssuer, session: aiohttp.ClientSession, header_typ: str
):
    token = issuer.sign(issuer.claims(typ="Bearer"), headers={"typ": header_typ})
    assert jwt.get_unverified_header(token)["typ"] == header_typ
    assert (await _validator(issuer, session).validate(token))["typ"] == "Bearer"


@pytest.mark.parametrize("header_typ", ["logout+jwt", "secevent+jwt", "id_token+jwt", "dpop+jwt"])
async def test_other_typed_jwts_refused(
    issuer: LocalIssuer, session: aiohttp.ClientSession, header_typ: str
):
    token = issuer.sign(issuer.claims(), headers={"typ": header_typ})
    reason = await _reason(_validator(issuer, session), token)
    assert reason == f"not an access token (header typ '{header_typ}'); send an access token"


async def test_type_is_checked_after_the_signature(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    forged = issuer.sign(issuer.claims(typ="ID"), key=new_rsa())
    assert await _reason(_validator(issuer, session), forged) == "signature verification failed"


def test_unsafe_algorithms_rejected_at_construction(session: aiohttp.ClientSession) -> None:
    jwks = JWKSCache(session)
    with pytest.raises(ValueError, match="HS256"):
        JWTValidator(
            [IssuerConfig(issuer="https://x", audiences=["gw"])],
            jwks,
            algorithms=["RS256", "HS256"],
        )


def test_looks_like_jwt() -> None:
    token = jwt.encode({"a": 1}, new_rsa(), algorithm="RS256")
    assert looks_like_jwt(token)
    assert not looks_like_jwt("8f14e45fceea167a5a36dedd4bea2543")
    assert not looks_like_jwt("eyJhbGciOiJub25lIn0")
    assert not looks_like_jwt(token + "\n"), "a trailing newline is not part of a JWT"


async def test_cached_validation_still_expires(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    validator = _validator(issuer, session, leeway_s=0.0)
    now = int(time.time())
    token = issuer.token("carol", iat=now, exp=now + 2)
    first = await validator.validate(token)
    assert await validator.validate(token) == first  # second time from the verified cache
    await asyncio.sleep(2.2)
    with pytest.raises(InvalidToken, match="token expired"):
        await validator.validate(token)
