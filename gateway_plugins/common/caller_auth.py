"""Who may ask a plugin's checks: a credential of the gateway itself, not only the user's token.

The ext_authz checks (token exchange ``/check`` and ``/ext-authz/*``; policy ``/check``,
``/v1/decide``, ``/v1/filter``) act on a user's bearer token: the token exchange answers with a
token for the requested target, the policy with a decision and a signed tool list. Without a
credential of their own, any pod that reaches them could ask (and get a token for any target the
check routes). So the callers (Envoy, Istio's gateway, Authorino, the combined check) present one:

* ``mode: secret``: a header (``header``, default ``x-kmg-caller-secret``) equal to the secret of
  ``secret_file`` / ``secret_env``, compared in constant time. The gateway sets it on every check
  request: Envoy ``http_service.authorization_request.headers_to_add``, Istio
  ``envoyExtAuthzHttp.includeAdditionalHeadersInCheck``, Authorino ``sharedSecretRef`` with
  ``credentials.customHeader``. Envoy never forwards a client's copy of the header to a check
  (only the headers it is told to pass), and the header it adds replaces any.
* ``mode: mtls``: the service serves HTTPS (``tls_cert_file`` / ``tls_key_file``) and asks every
  client for a certificate signed by ``client_ca_file``; the protected endpoints require one, and
  when ``allowed_client_names`` is set, its subject CN or one of its SANs (DNS name, URI such as a
  SPIFFE id) must be listed. Probes and ``/metrics`` stay reachable without a certificate.
* ``mode: off``: development only, anyone who reaches the port may ask (a WARNING at start).

A refused caller gets 403 ``{"allow": false, "error": "caller_unauthenticated", "reason"}``: never
a token, never a decision.
"""

from __future__ import annotations

import hmac
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, field_validator

from kmg_common.settings import SettingsError, StrictModel, read_secret

log = logging.getLogger(__name__)

DEFAULT_HEADER = "x-kmg-caller-secret"
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Headers a caller credential must not use: the user's token, and the gateway's routing headers
# (the combined check forwards every x-mcp-* header to the policy service).
_RESERVED = ("authorization", "proxy-authorization", "cookie", "host", "content-type")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CallerAuthConfig(StrictModel):
    """How the service's check endpoints authenticate their caller (the gateway)."""

    mode: Literal["secret", "mtls", "off"] = Field(
        default="secret",
        description="secret (a header the gateway sets), mtls (client certificate) or off "
        "(development only: any pod may ask the checks).",
    )
    header: str = Field(
        default=DEFAULT_HEADER, description="mode secret: the header carrying the secret."
    )
    secret_file: Path | None = Field(
        default=None, description="mode secret: file holding the shared secret."
    )
    secret_env: str | None = Field(
        default=None, description="mode secret: env var holding the shared secret."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="mode mtls: this service's serving certificate (PEM)."
    )
    tls_key_file: Path | None = Field(default=None, description="mode mtls: its private key.")
    client_ca_file: Path | None = Field(
        default=None, description="mode mtls: CA bundle that signs the callers' certificates."
    )
    allowed_client_names: list[str] = Field(
        default_factory=list,
        description="mode mtls: subject CN or SAN (DNS, URI e.g. spiffe://...) a caller's "
        "certificate must carry; empty: any certificate of client_ca_file.",
    )

    @field_validator("header")
    @classmethod
    def _header_ok(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEADER_NAME.fullmatch(value) or value in _RESERVED or value.startswith("x-mcp-"):
            raise ValueError(
                f"caller_auth.header {value!r} must be a plain header name (letters, digits, '-'), "
                "not authorization/cookie/host nor an x-mcp-* routing header"
            )
        return value

    def problem(self, where: str = "caller_auth") -> str | None:
        """Why this configuration cannot protect the checks, or None."""
        if self.mode == "secret" and self.secret_file is None and self.secret_env is None:
            return (
                f"{where}: the check endpoints need a credential of their caller; set "
                f"{where}.secret_file (or {where}.secret_env): the secret the gateway sends in "
                f"header {self.header} on every check request; or {where}.mode: mtls; or "
                f"{where}.mode: off for development only (then any pod may ask the checks)"
            )
        if self.mode == "mtls":
            missing = [
                name
                for name in ("tls_cert_file", "tls_key_file", "client_ca_file")
                if getattr(self, name) is None
            ]
            if missing:
                return f"{where}.mode mtls needs " + ", ".join(f"{where}.{m}" for m in missing)
        return None


def _names_of(peercert: Mapping[str, Any]) -> set[str]:
    """Subject CN and SAN values of a certificate as ``ssl.getpeercert()`` gives it."""
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for _kind, value in peercert.get("subjectAltName", ()):
        names.add(str(value))
    return names


class CallerAuthenticator:
    """Checks one request's caller credential; built once at start (secrets read then)."""

    def __init__(self, config: CallerAuthConfig, where: str = "caller_auth") -> None:
        problem = config.problem(where)
        if problem is not None:
            raise SettingsError(problem)
        self.config = config
        self._secret: bytes | None = None
        if config.mode == "secret":
            self._secret = read_secret(
                f"{where}.secret", file=config.secret_file, env=config.secret_env
            ).encode()
        self._allowed = frozenset(config.allowed_client_names)
        if config.mode == "off":
            log.warning(
                "%s.mode is off: any pod that reaches this service may ask its checks "
                "(development only; set %s.secret_file or %s.mode: mtls)",
                where,
                where,
                where,
            )

    @property
    def secret(self) -> str | None:
        """The shared secret (mode secret), e.g. for a call this service makes to a peer."""
        return self._secret.decode() if self._secret is not None else None

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """mode mtls: HTTPS that asks for (but does not demand) a client certificate, so probes
        without one still work; the protected endpoints then require it."""
        cfg = self.config
        if cfg.mode != "mtls":
            return None
        if cfg.tls_cert_file is None or cfg.tls_key_file is None or cfg.client_ca_file is None:
            raise SettingsError(
                "caller_auth mode mtls needs tls_cert_file, tls_key_file and client_ca_file"
            )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
            context.load_verify_locations(cafile=str(cfg.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"caller_auth (mtls): cannot load the TLS files: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def refusal(self, request: web.Request) -> str | None:
        """Why this request's caller is not authenticated, or None when it is."""
        mode = self.config.mode
        if mode == "off":
            return None
        if mode == "secret":
            assert self._secret is not None
            given = request.headers.get(self.config.header)
            if not given:
                return (
                    f"the caller of this check did not send the gateway's credential (header "
                    f"{self.config.header}); only the gateway may ask this service"
                )
            if not hmac.compare_digest(given.strip().encode(), self._secret):
                return f"the caller's credential (header {self.config.header}) is wrong"
            return None
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        if not peercert:
            return (
                "this check requires a client certificate (mTLS) signed by the gateway's CA; "
                "the caller presented none"
            )
        if self._allowed and not (_names_of(peercert) & self._allowed):
            return "the caller's client certificate names no allowed client (allowed_client_names)"
        return None


def caller_refused(reason: str) -> web.Response:
    """The answer to an unauthenticated caller: explicit ``allow: false``, no token, no decision."""
    return web.json_response(
        {"allow": False, "error": "caller_unauthenticated", "reason": reason}, status=403
    )


def protect(handler: Handler, authenticator: CallerAuthenticator) -> Handler:
    """``handler`` behind the caller check."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        reason = authenticator.refusal(request)
        if reason is not None:
            log.warning(
                "refused an unauthenticated caller of %s %s from %s: %s",
                request.method,
                request.path,
                request.remote,
                reason,
            )
            return caller_refused(reason)
        return await handler(request)

    return guarded
