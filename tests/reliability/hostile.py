"""Hostile bearer tokens and helpers shared by the reliability tests.

Signed tokens come from :class:`~tests.gateway_plugins.common.issuer.LocalIssuer`, a real OIDC
issuer (discovery + JWKS over HTTP) whose keys the tests hold, trusted by the services under test
next to Keycloak: that is how a token with a *valid* signature but a bad claim (expired, wrong
audience, JSON bomb...) is produced. Keycloak-derived forgeries start from a real realm token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.gateway_plugins.common.issuer import LocalIssuer, new_rsa

LOCAL_AUDIENCE = "gateway"  # the audience the services require of the local issuer's tokens
NEST_DEPTH = 2000  # deeper than Python's recursion limit, small enough for an 8 KB header


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONE_HEADER = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
NONE_KID_HEADER = base64.urlsafe_b64encode(b'{"alg":"None","kid":"rsa-1"}').rstrip(b"=").decode()


def sign_raw(header: dict[str, Any] | str, payload: str, key: rsa.RSAPrivateKey) -> str:
    """RS256 over arbitrary header/payload text (lets a JSON bomb carry a valid signature)."""
    head = header if isinstance(header, str) else json.dumps(header)
    signing_input = f"{b64(head.encode())}.{b64(payload.encode())}"
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def hs256(claims: dict[str, Any], kid: str | None, secret: bytes) -> str:
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hostile_tokens(
    local: LocalIssuer,
    untrusted: LocalIssuer,
    realm_token: str | None = None,
    realm_public_key: Any = None,
) -> dict[str, str]:
    """Every token kind of the issue, by a readable name. All must be refused."""
    now = int(time.time())
    key = local.keys["rsa-1"]
    assert isinstance(key, rsa.RSAPrivateKey)
    good = local.token(aud=[LOCAL_AUDIENCE])
    head, payload, sig = good.split(".")
    claims = local.claims(aud=[LOCAL_AUDIENCE])
    iss = local.issuer
    nested = "[" * NEST_DEPTH + "]" * NEST_DEPTH
    tokens: dict[str, str] = {
        "alg none": f"{NONE_HEADER}.{payload}.",
        "alg None with the original signature": f"{NONE_KID_HEADER}.{payload}.{sig}",
        "HS256 signed with the issuer's public key": hs256(claims, "rsa-1", public_pem(key)),
        "expired": local.sign(local.claims(aud=[LOCAL_AUDIENCE], iat=now - 7200, exp=now - 3600)),
        "not yet valid (nbf)": local.sign(local.claims(aud=[LOCAL_AUDIENCE], nbf=now + 3600)),
        "issued in the future (iat)": local.sign(
            local.claims(aud=[LOCAL_AUDIENCE], iat=now + 3600, exp=now + 7200)
        ),
        "wrong issuer (valid token of an untrusted issuer)": untrusted.token(aud=[LOCAL_AUDIENCE]),
        "wrong issuer claim, trusted key": local.sign(
            local.claims(aud=[LOCAL_AUDIENCE], iss="https://evil.example/realms/mcp")
        ),
        "wrong audience": local.token(aud=["someone-else"]),
        "no exp": local.sign(local.claims(aud=[LOCAL_AUDIENCE], exp=None)),
        "unknown kid": local.sign(claims, key=new_rsa(), kid="rotated-kid-0"),
        "forged signature, known kid": local.sign(claims, key=new_rsa(), kid="rsa-1"),
        "truncated signature": good[:-12],
        "truncated to two segments": f"{head}.{payload}",
        "truncated mid-payload": good[: len(head) + 1 + len(payload) // 2],
        "64 KB long (signed)": local.sign(local.claims(aud=[LOCAL_AUDIENCE], pad="x" * 65536)),
        "bad base64: padding characters": f"{head}.{payload}==.{sig}",
        "bad base64: length 4n+1": f"{head}.{payload}A.{sig}",
        "bad base64: non-alphabet characters": f"{head}.{payload[:-3]}%!$.{sig}",
        "JSON bomb: nested arrays in a claim (signed)": sign_raw(
            {"alg": "RS256", "kid": "rsa-1"},
            f'{{"iss":"{iss}","aud":"{LOCAL_AUDIENCE}","exp":{now + 300},"x":{nested}}}',
            key,
        ),
        "JSON bomb: nested arrays in the header (signed)": sign_raw(
            f'{{"alg":"RS256","kid":"rsa-1","x":{nested}}}', json.dumps(claims), key
        ),
        "JSON bomb: 5000-digit exp (signed)": sign_raw(
            {"alg": "RS256", "kid": "rsa-1"},
            f'{{"iss":"{iss}","aud":"{LOCAL_AUDIENCE}","exp":{"9" * 5000}}}',
            key,
        ),
        "JSON bomb: exp 1e999 (signed)": sign_raw(
            {"alg": "RS256", "kid": "rsa-1"},
            f'{{"iss":"{iss}","aud":"{LOCAL_AUDIENCE}","exp":1e999}}',
            key,
        ),
        "payload is a JSON array (signed)": sign_raw({"alg": "RS256", "kid": "rsa-1"}, "[1]", key),
        "opaque string": "2YotnFZFEjr1zCsicMWpAA",
    }
    if realm_token is not None and realm_public_key is not None:
        realm_claims = jwt.decode(realm_token, options={"verify_signature": False})
        kid = jwt.get_unverified_header(realm_token)["kid"]
        tokens["HS256 signed with the Keycloak realm's public key"] = hs256(
            realm_claims, kid, public_pem(realm_public_key)
        )
        r_head, r_payload, _ = realm_token.split(".")
        tokens["Keycloak token, alg none"] = f"{NONE_HEADER}.{r_payload}."
        tokens["Keycloak token, signature stripped"] = f"{r_head}.{r_payload}."
    return tokens


_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:'()-]")


def safe_name(kind: str) -> str:
    return _UNSAFE.sub("_", kind)


def metric_total(metrics_text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in a Prometheus text exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
