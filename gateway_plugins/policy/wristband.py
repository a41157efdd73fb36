"""The signed per-user tool list ("wristband") the MCP Gateway broker uses to filter tools/list.

An ES256 JWT with a short lifetime, in one of the two forms the broker releases read:

* ``x-authorized-tools`` with claim ``allowed-tools``: a JSON *string* mapping server name to tool
  names, e.g. ``"{\\"mcp-test/kubernetes-mcp\\":[\\"pods_get\\",\\"pods_list\\"]}"``;
* ``x-mcp-authorized`` with claim ``allowed-capabilities``: a JSON string
  ``{"tools": {server: [...]}, "prompts": {server: [...]}}``. The MCP Gateway v0.9.0 broker
  reads only this form, for ``tools/list`` and ``prompts/list`` alike: a server missing under
  ``prompts`` shows none of its prompts.

Empty lists stay ``[]`` (never null). The broker verifies the signature with the PEM public key
and ``exp`` only; the public key is also served as a JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LEGACY_HEADER = "x-authorized-tools"
LEGACY_CLAIM = "allowed-tools"
CURRENT_HEADER = "x-mcp-authorized"
CURRENT_CLAIM = "allowed-capabilities"


class WristbandForm(StrEnum):
    LEGACY = "x-authorized-tools"  # claim allowed-tools (older broker releases)
    CURRENT = "x-mcp-authorized"  # claim allowed-capabilities (newer releases)
    BOTH = "both"


class WristbandKeyError(Exception):
    """The signing key cannot be used; the message names the file, never the key."""


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a PEM file (PKCS#8 or SEC1)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise WristbandKeyError(
            f"cannot read the wristband signing key {path}: {exc.strerror or exc}"
        ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise WristbandKeyError(
            f"{path} is not an unencrypted PEM private key; create one with "
            "`openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise WristbandKeyError(f"{path} must be an EC P-256 key: the broker accepts ES256 only")
    return key


def generate_signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _b64url(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()


@dataclass(frozen=True)
class SignedList:
    """The headers to add upstream and what they say."""

    headers: dict[str, str]
    allowed: dict[str, list[str]]
    expires_at: float
    prompts: dict[str, list[str]] = field(default_factory=dict)


class WristbandSigner:
    """Signs per-user tool lists; one instance per service (the key is loaded once)."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str = "mcp-policy",
        lifetime_s: int = 300,
        form: WristbandForm = WristbandForm.LEGACY,
        key_id: str | None = None,
    ) -> None:
        if lifetime_s <= 0:
            raise ValueError("wristband lifetime must be positive")
        self._key = key
        self._issuer = issuer
        self._lifetime = lifetime_s
        self._form = form
        public = key.public_key()
        self._public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        numbers = public.public_numbers()
        self._jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x),
            "y": _b64url(numbers.y),
            "use": "sig",
            "alg": "ES256",
        }
        self._kid = key_id or self._thumbprint()
        self._jwk["kid"] = self._kid

    def _thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint: a stable key id derived from the public key."""
        required = {k: self._jwk[k] for k in ("crv", "kty", "x", "y")}
        digest = hashlib.sha256(compact_json(required).encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @property
    def public_key_pem(self) -> str:
        """What the broker's ``TRUSTED_HEADER_PUBLIC_KEY`` must hold."""
        return self._public_pem

    @property
    def lifetime_s(self) -> int:
        return self._lifetime

    @property
    def form(self) -> WristbandForm:
        return self._form

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def sign(
        self,
        allowed: Mapping[str, list[str]],
        *,
        prompts: Mapping[str, list[str]] | None = None,
        subject: str | None = None,
        form: WristbandForm | None = None,
        now: float | None = None,
    ) -> SignedList:
        """Headers carrying ``allowed`` ({server: [tool, ...]}) and ``prompts`` ({server:
        [prompt, ...]}, current form only) in the configured form(s)."""
        issued = int(now if now is not None else time.time())
        tools = _sorted_names(allowed)
        prompt_names = _sorted_names(prompts or {})
        base: dict[str, Any] = {
            "iss": self._issuer,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self._lifetime,
            "jti": uuid.uuid4().hex,
        }
        if subject:
            base["sub"] = subject
        headers: dict[str, str] = {}
        chosen = form or self._form
        if chosen in (WristbandForm.LEGACY, WristbandForm.BOTH):
            headers[LEGACY_HEADER] = self._encode({**base, LEGACY_CLAIM: compact_json(tools)})
        if chosen in (WristbandForm.CURRENT, WristbandForm.BOTH):
            capabilities = {"tools": tools, "prompts": prompt_names}
            headers[CURRENT_HEADER] = self._encode(
                {**base, CURRENT_CLAIM: compact_json(capabilities)}
            )
        return SignedList(headers, tools, float(base["exp"]), prompt_names)

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self._key, algorithm="ES256", headers={"kid": self._kid, "typ": "JWT"}
        )


def _sorted_names(by_server: Mapping[str, list[str]]) -> dict[str, list[str]]:
    return {
        str(server): sorted({str(n) for n in names or []}) for server, names in by_server.items()
    }


def verify(token: str, public_key_pem: str) -> dict[str, Any]:
    """Verify like the broker does (ES256 signature and ``exp``; no iss or aud check)."""
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key_pem,
        algorithms=["ES256"],
        options={"verify_aud": False, "require": ["exp"]},
    )
    return claims
