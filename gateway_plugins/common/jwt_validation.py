"""Local JWT validation that fails closed with clear, token-free reasons.

Checks, in order: size, shape, header (allowed asymmetric algorithm, ``kid``), ``iss`` among the
configured issuers, signature with the issuer's JWKS key, ``exp``/``nbf``/``iat`` with a small
leeway, the token type, and ``aud`` when the issuer has audiences configured. ``none`` and every
HMAC algorithm are refused outright, so a public key can never be used as an HMAC secret.

Token type: only access tokens are accepted. A ``typ`` claim, when present, must be ``Bearer``
(Keycloak's access tokens) or ``at+jwt``; a ``typ`` header, when present, must be ``JWT`` or
``at+jwt`` (RFC 9068). So an ID token (``typ: ID``), a refresh or logout token, or any other
explicitly typed JWT (``logout+jwt``, ``secevent+jwt``...) of a trusted issuer is refused.

Audiences are required: an issuer without ``audiences`` is refused at load (a token issued to
any other client of the realm, e.g. ``admin-cli``, would otherwise pass), unless its
``allow_any_audience`` says so explicitly (development only; a WARNING at start names it).

When the issuer's keys cannot be loaded the caller gets a generic
:data:`KEYS_UNAVAILABLE` message; the detail (URL, error) goes only to the log.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from pydantic import BaseModel, Field, model_validator

from gateway_plugins.common.jwks import JWKSCache, JWKSError, UnknownKey

SAFE_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256")

log = logging.getLogger(__name__)

# What a caller is told when the issuer's keys cannot be loaded: no internal URL or error detail.
KEYS_UNAVAILABLE = "the identity provider's keys are unavailable; retry later"
# ``typ`` claim of an access token (Keycloak: "Bearer"), and ``typ`` header values of one.
_ACCESS_TYP_CLAIMS = frozenset({"bearer", "at+jwt", "application/at+jwt"})
_ACCESS_TYP_HEADERS = frozenset({"jwt", "at+jwt", "application/at+jwt"})

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is not acceptable; ``reason`` is safe to show to the caller (no token data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ValidationUnavailable(Exception):
    """The token could not be checked (issuer keys unreachable): answer 503, not 401.

    ``str()`` is the generic :data:`KEYS_UNAVAILABLE`, safe for unauthenticated callers;
    ``detail`` (issuer, URL, error) is for logs only.
    """

    def __init__(self, message: str = KEYS_UNAVAILABLE, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class IssuerConfig(BaseModel):
    """One trusted token issuer."""

    issuer: str = Field(description="Exact 'iss' value, e.g. https://kc.example/realms/mcp.")
    jwks_uri: str | None = Field(
        default=None, description="JWKS URL; found through OIDC discovery when unset."
    )
    audiences: list[str] = Field(
        default_factory=list,
        description=(
            "The token's 'aud' must contain one of these (e.g. the gateway's client id). "
            "Required: empty is refused at start unless allow_any_audience is true."
        ),
    )
    allow_any_audience: bool = Field(
        default=False,
        description="Development only: with empty audiences, accept this issuer's tokens "
        "whatever their 'aud' (tokens of any client of the realm).",
    )

    @model_validator(mode="after")
    def _audience_bound(self) -> IssuerConfig:
        if not self.audiences and not self.allow_any_audience:
            raise ValueError(
                f"issuer {self.issuer}: 'audiences' is empty, so a token issued to any client of "
                "that realm (e.g. admin-cli) would be accepted; set audiences to the audience(s) "
                "this service accepts (e.g. [mcp-gateway]), or allow_any_audience: true for "
                "development only"
            )
        return self


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments starting with a JSON object header (``eyJ``)."""
    return token.startswith("eyJ") and bool(_JWT_SHAPE.fullmatch(token))


def _key_matches(alg: str, key: object) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


class JWTValidator:
    """Validate bearer JWTs of the configured issuers against their JWKS."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        jwks: JWKSCache,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_s: float = 30.0,
        max_token_bytes: int = 16 * 1024,
        verified_cache_size: int = 4096,
        verified_cache_ttl_s: float = 60.0,
    ) -> None:
        unsafe = sorted(set(algorithms) - SAFE_ALGORITHMS)
        if unsafe:
            raise ValueError(
                f"algorithms {unsafe} are not allowed; choose from {sorted(SAFE_ALGORITHMS)}"
            )
        if not issuers:
            raise ValueError("at least one trusted issuer must be configured")
        self._issuers = {i.issuer: i for i in issuers}
        self._jwks = jwks
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway_s
        self._max_bytes = max_token_bytes
        # Exact token bytes already verified -> (claims, recheck deadline). Saves the signature
        # check on repeated requests; exp/nbf are re-checked on every use.
        self._verified: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()
        self._verified_size = verified_cache_size
        self._verified_ttl = verified_cache_ttl_s
        for cfg in issuers:
            jwks.register(cfg.issuer, cfg.jwks_uri)
            if not cfg.audiences:
                log.warning(
                    "issuer %s has no audiences and allow_any_audience is set: its tokens are "
                    "accepted whatever their 'aud' (development only; set audiences)",
                    cfg.issuer,
                )

    @property
    def issuers(self) -> list[str]:
        return list(self._issuers)

    async def validate(self, token: str) -> dict[str, Any]:
        """Return the verified claims or raise :class:`InvalidToken` / ``ValidationUnavailable``."""
        if not token:
            raise InvalidToken("no bearer token")
        if len(token) > self._max_bytes:
            raise InvalidToken(f"token larger than {self._max_bytes} bytes")
        if not looks_like_jwt(token):
            raise InvalidToken("token is not a JWT (expected three base64url segments)")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._recall(digest)
        if cached is not None:
            return cached
        claims = await self._verify(token)
        self._remember(digest, claims)
        return dict(claims)

    def _recall(self, digest: bytes) -> dict[str, Any] | None:
        entry = self._verified.get(digest)
        if entry is None:
            return None
        claims, deadline = entry
        now = time.time()
        if now >= deadline:
            del self._verified[digest]
            return None
        if now > float(claims["exp"]) + self._leeway:
            del self._verified[digest]
            raise InvalidToken("token expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + self._leeway < nbf:
            raise InvalidToken("token not yet valid ('nbf' or 'iat' in the future)")
        self._verified.move_to_end(digest)
        return dict(claims)

    def _remember(self, digest: bytes, claims: dict[str, Any]) -> None:
        if self._verified_size <= 0:
            return
        deadline = min(time.time() + self._verified_ttl, float(claims["exp"]) + self._leeway)
        self._verified[digest] = (claims, deadline)
        while len(self._verified) > self._verified_size:
            self._verified.popitem(last=False)

    async def _verify(self, token: str) -> dict[str, Any]:
        alg, kid, typ = self._header(token)
        issuer = self._unverified_issuer(token)
        try:
            key = await self._jwks.get_key(issuer, kid)
        except UnknownKey:
            raise InvalidToken(f"signing key '{kid}' is unknown to issuer {issuer}") from None
        except JWKSError as exc:
            detail = f"cannot load the signing keys of {issuer}: {exc}"
            log.warning("token validation unavailable: %s", detail)
            raise ValidationUnavailable(detail=detail) from None
        if not _key_matches(alg, key.key):
            raise InvalidToken(f"algorithm {alg} does not match the issuer's key '{kid}'")
        claims = self._decode(token, key.key, alg, issuer)
        _check_access_token_type(typ, claims.get("typ"))
        self._check_audience(claims, issuer)
        return claims

    def _check_audience(self, claims: dict[str, Any], issuer: str) -> None:
        """After the type check, so an ID token (addressed to its client) is named as such."""
        audiences = self._issuers[issuer].audiences
        if not audiences:
            return
        aud = claims.get("aud")
        given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if set(audiences).isdisjoint(a for a in given if isinstance(a, str)):
            raise InvalidToken(f"token audience is not one of {audiences}")

    def _header(self, token: str) -> tuple[str, str, object]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token header") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("unsigned token (alg 'none') refused")
        if alg.upper().startswith("HS"):
            raise InvalidToken(f"symmetric algorithm {alg} refused; only asymmetric signatures")
        if alg not in self._algorithms:
            raise InvalidToken(f"algorithm {alg} not allowed; allowed: {sorted(self._algorithms)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token header has no 'kid'")
        return alg, kid, header.get("typ")

    def _unverified_issuer(self, token: str) -> str:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise InvalidToken("malformed token payload") from None
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise InvalidToken("token has no 'iss' claim")
        if issuer not in self._issuers:
            raise InvalidToken(f"issuer {issuer} is not trusted")
        return issuer

    def _decode(self, token: str, key: Any, alg: str, issuer: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid ('nbf' or 'iat' in the future)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature verification failed") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token has no '{exc.claim}' claim") from None
        except jwt.InvalidIssuedAtError:
            raise InvalidToken("token has an invalid 'iat' claim") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None
        return claims


def _check_access_token_type(header_typ: object, claim_typ: object) -> None:
    """Refuse a verified token that declares itself something other than an access token."""
    if header_typ is not None and (
        not isinstance(header_typ, str) or header_typ.lower() not in _ACCESS_TYP_HEADERS
    ):
        raise InvalidToken(
            f"not an access token (header typ {_shown(header_typ)}); send an access token"
        )
    if claim_typ is not None and (
        not isinstance(claim_typ, str) or claim_typ.lower() not in _ACCESS_TYP_CLAIMS
    ):
        raise InvalidToken(
            f"not an access token (typ {_shown(claim_typ)}; an ID, refresh or logout token is "
            "refused); send an access token"
        )


def _shown(value: object) -> str:
    """A short, printable rendering of a caller-supplied ``typ`` for an error message."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(re.sub(r"[^A-Za-z0-9+/._-]", "?", text[:40]))
