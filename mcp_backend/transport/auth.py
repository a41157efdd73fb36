"""Bearer token extraction on every request, and the 401 answer with RFC 9728 pointers.

The token's signature is never verified here: the chosen API server authenticates it and its RBAC
decides. But a genuine token addressed to someone else can be refused (:class:`TokenBinding`,
settings ``accepted_audiences`` / ``authorized_parties``): behind the gateway the backend only
ever sees tokens the gateway exchanged for it (``aud`` = its server name, ``azp`` = the gateway's
client), so a user's own token, or another service's, sent to the backend around the gateway is
refused with 401 before any tool runs. A forged JWT that passes this check gains nothing: the API
server refuses its signature.

The MCP Gateway broker discovers tools itself, straight at the backend, with a bearer of its own
(``discovery_credential_file``): that one exact value is accepted on ``/mcp`` whatever the
binding, and refused by ``tools/call`` (:mod:`mcp_backend.server`): it lists, never acts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from starlette.types import ASGIApp, Receive, Scope, Send

from kmg_common.bearer import bearer_token
from mcp_backend.metrics import Metrics

if TYPE_CHECKING:
    from mcp_backend.config import Settings

METADATA_PATH = "/.well-known/oauth-protected-resource"
ALT_HEADER = "kubernetes-authorization"
SCOPE_TOKEN = "kmg.bearer_token"  # noqa: S105 - the ASGI scope key, not a secret


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of ``Authorization`` (or ``kubernetes-authorization``), else None."""
    for header in ("authorization", ALT_HEADER):
        value = (headers.get(header) or "").strip()
        if not value:
            continue
        token = bearer_token(value)
        if token is not None:
            return token
        if header == ALT_HEADER and _bare_token(value):
            return value
    return None


def scope_token(scope: Mapping[str, Any]) -> str | None:
    """The header token :class:`RequireBearer` parsed for this request (None: no header token,
    or the request did not pass through it: fail closed)."""
    token = scope.get(SCOPE_TOKEN)
    return token if isinstance(token, str) else None


def _bare_token(value: str) -> bool:
    """A ``kubernetes-authorization`` value without a scheme: one token, not a scheme name."""
    if value.lower() in ("bearer", "basic"):
        return False
    return not any(char.isspace() or char == "," for char in value)


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token (not verified), None for an opaque token.

    Raises ValueError for a token that looks like a JWT but whose payload cannot be read.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].startswith("eyJ"):
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise ValueError(
            "the bearer token looks like a JWT but its payload is unreadable"
        ) from None
    if not isinstance(claims, dict):
        raise ValueError("the bearer token's payload is not a JSON object")
    return claims


@dataclass(frozen=True)
class TokenBinding:
    """Which bearer tokens are addressed to this backend (``aud`` / ``azp`` of a JWT), and the
    MCP Gateway broker's discovery credential (accepted on ``/mcp`` for listing only)."""

    audiences: frozenset[str] = frozenset()
    parties: frozenset[str] = frozenset()
    reject_opaque: bool = False
    discovery: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenBinding:
        return cls(
            frozenset(settings.accepted_audiences),
            frozenset(settings.authorized_parties),
            settings.opaque_tokens == "reject",
            settings.discovery_credential(),
        )

    @property
    def active(self) -> bool:
        return bool(self.audiences or self.parties)

    def is_discovery(self, token: str) -> bool:
        """Whether ``token`` is the broker's discovery credential (constant-time compare)."""
        return self.discovery is not None and hmac.compare_digest(
            token.encode(), self.discovery.encode()
        )

    def problem(self, token: str) -> str | None:
        """Why this token is not addressed to this backend (safe to show), or None."""
        if not self.active or self.is_discovery(token):
            return None
        try:
            claims = _jwt_claims(token)
        except ValueError as exc:
            return str(exc)
        if claims is None:
            if self.reject_opaque:
                return "opaque (non-JWT) bearer tokens are not accepted here (opaque_tokens)"
            return None
        if self.audiences:
            aud = claims.get("aud")
            given = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
            if self.audiences.isdisjoint(a for a in given if isinstance(a, str)):
                return (
                    "the token is not addressed to this MCP server (its 'aud' lacks "
                    f"{_names(self.audiences)}): send it through the gateway, which exchanges it"
                )
        if self.parties and claims.get("azp") not in self.parties:
            return (
                "the token was not issued to a party allowed here (its 'azp' is not "
                f"{_names(self.parties)}): send it through the gateway, which exchanges it"
            )
        return None


def _names(values: frozenset[str]) -> str:
    return " or ".join(repr(v) for v in sorted(values))


def metadata_url(resource_url: str) -> str:
    """RFC 9728 §3.1: ``https://h/mcp`` → ``https://h/.well-known/oauth-protected-resource/mcp``."""
    parsed = urlparse(resource_url)
    path = parsed.path if parsed.path != "/" else ""
    return f"{parsed.scheme}://{parsed.netloc}{METADATA_PATH}{path}"


def request_resource_url(scope: Scope, configured: str | None) -> str:
    """The configured public URL, or the one this request reached (scheme://host/mcp)."""
    if configured:
        return configured
    headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    host = headers.get("host", "localhost")
    scheme = headers.get("x-forwarded-proto", scope.get("scheme", "http"))
    return f"{scheme}://{host}/mcp"


_BEARER_REQUIRED = (
    "a bearer token is required: send 'Authorization: Bearer <token>' (the token is passed to "
    "the Kubernetes API server)"
)


class RequireBearer:
    """ASGI wrapper of ``/mcp``: no token, or a token addressed to someone else (``binding``) →
    401 + ``WWW-Authenticate: Bearer error="invalid_token", resource_metadata=...``.

    ``optional`` (tokens accepted in tool arguments): a request without a header token passes
    (the tool call checks the argument's token), a header token is still checked.

    The token it parsed is kept in the request's scope (:func:`scope_token`), so the handlers
    do not parse the headers again.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        resource_url: str | None,
        metrics: Metrics,
        optional: bool = False,
        binding: TokenBinding | None = None,
    ) -> None:
        self.app = app
        self.resource_url = resource_url
        self.metrics = metrics
        self.optional = optional
        self.binding = binding or TokenBinding()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = extract_token(headers)
        scope[SCOPE_TOKEN] = token
        if token is None and self.optional:
            await self.app(scope, receive, send)
            return
        problem = _BEARER_REQUIRED if token is None else self.binding.problem(token)
        if problem is None:
            await self.app(scope, receive, send)
            return
        self.metrics.unauthenticated.inc()
        await self._refuse(scope, send, problem)

    async def _refuse(self, scope: Scope, send: Send, description: str) -> None:
        meta = metadata_url(request_resource_url(scope, self.resource_url))
        body = json.dumps({"error": "invalid_token", "error_description": description}).encode()
        quoted = description.replace("\\", "").replace('"', "'")
        challenge = (
            f'Bearer error="invalid_token", error_description="{quoted}", '
            f'resource_metadata="{meta}"'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", challenge.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
