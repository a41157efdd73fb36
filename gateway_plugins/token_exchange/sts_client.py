"""The only module that talks to the token service (Keycloak): RFC 8693 token exchange and the
RFC 7523 JWT authorization grant, with client authentication by secret or private-key JWT.

All calls share one aiohttp session. Failures are mapped at this boundary:
:class:`STSRefused` (the STS said no: the caller gets 403) and :class:`STSUnavailable` (network,
timeout, 5xx, a redirect, or our own client credentials rejected: the caller gets 503/502).
Redirects are never followed, so the form (subject token, client secret or assertion) only ever
goes to the configured ``token_url``. A small circuit breaker fails fast after repeated outages
and lets a trial call through after the cooldown, so the service recovers by itself when Keycloak
comes back.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from gateway_plugins.token_exchange.config import BreakerConfig
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.sts_config import ClientAuth, Grant, STSConfig
from kmg_common.logging import redact

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_MAX_BODY = 256 * 1024


class STSRefused(Exception):
    """The token service refused the request (OAuth error); safe to show (no token data)."""

    def __init__(self, sts: str, status: int, error: str, description: str) -> None:
        self.sts = sts
        self.status = status
        self.error = error or "invalid_request"
        self.description = redact(description)[:300]
        detail = f": {self.description}" if self.description else ""
        super().__init__(f"token service '{sts}' refused the exchange ({self.error}{detail})")


class STSUnavailable(Exception):
    """The token service could not be used; ``misconfigured`` = our credentials were rejected."""

    def __init__(self, message: str, *, misconfigured: bool = False) -> None:
        super().__init__(message)
        self.misconfigured = misconfigured


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: float | None
    issued_token_type: str | None
    scope: str | None


class _Breaker:
    def __init__(self, config: BreakerConfig) -> None:
        self._limit = config.failures
        self._cooldown = config.cooldown_s
        self.failures = 0
        self._open_until = 0.0

    def check(self, name: str) -> None:
        remaining = self._open_until - time.monotonic()
        if remaining > 0:
            raise STSUnavailable(
                f"token service '{name}' failed {self.failures} times in a row; "
                f"next attempt in {remaining:.1f}s"
            )

    def success(self) -> None:
        self.failures = 0
        self._open_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self._limit:
            self._open_until = time.monotonic() + self._cooldown


class STSClient:
    """One token endpoint and the client identity used there."""

    def __init__(
        self,
        name: str,
        config: STSConfig,
        session: aiohttp.ClientSession,
        *,
        client_secret: str | None = None,
        private_key: Any = None,
        breaker: BreakerConfig | None = None,
        metrics: ExchangeMetrics | None = None,
    ) -> None:
        if config.client_auth is ClientAuth.PRIVATE_KEY_JWT and private_key is None:
            raise ValueError(f"sts '{name}': private_key_jwt needs a private key")
        if config.client_auth is not ClientAuth.PRIVATE_KEY_JWT and not client_secret:
            raise ValueError(f"sts '{name}': {config.client_auth.value} needs a client secret")
        self.name = name
        self.config = config
        self._session = session
        self._secret = client_secret
        self._private_key = private_key
        self._breaker = _Breaker(breaker or BreakerConfig())
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    # -- grants ---------------------------------------------------------------------------------
    async def token_exchange(
        self, subject_token: str, audiences: Sequence[str], scope: str | None
    ) -> IssuedToken:
        form: list[tuple[str, str]] = [
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", TOKEN_TYPE_ACCESS),
            ("requested_token_type", TOKEN_TYPE_ACCESS),
        ]
        form += [("audience", a) for a in audiences]
        if scope:
            form.append(("scope", scope))
        return await self._token_request(Grant.TOKEN_EXCHANGE, form)

    async def jwt_bearer(self, assertion: str, scope: str | None) -> IssuedToken:
        form = [("grant_type", GRANT_JWT_BEARER), ("assertion", assertion)]
        if scope:
            form.append(("scope", scope))
        return await self._token_request(Grant.JWT_BEARER, form)

    async def probe(self) -> None:
        """Readiness: the realm's discovery document answers."""
        url = f"{self.config.issuer_url.rstrip('/')}/.well-known/openid-configuration"
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise STSUnavailable(
                        f"token service '{self.name}': {url} answered {resp.status}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise STSUnavailable(
                f"token service '{self.name}' unreachable at {url}: {_describe(exc)}"
            ) from None

    # -- plumbing -------------------------------------------------------------------------------
    def _client_auth(self, form: list[tuple[str, str]]) -> dict[str, str]:
        auth = self.config.client_auth
        if auth is ClientAuth.CLIENT_SECRET_BASIC:
            assert self._secret is not None
            raw = f"{_form_quote(self.config.client_id)}:{_form_quote(self._secret)}"
            return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
        if auth is ClientAuth.CLIENT_SECRET_POST:
            assert self._secret is not None
            form += [("client_id", self.config.client_id), ("client_secret", self._secret)]
            return {}
        form += [
            ("client_id", self.config.client_id),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", self.client_assertion()),
        ]
        return {}

    def client_assertion(self) -> str:
        """RFC 7523 client authentication JWT; ``aud`` is the realm issuer (Keycloak accepts it)."""
        now = int(time.time())
        claims = {
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.config.issuer_url,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 60,
        }
        headers = {"kid": self.config.private_key_kid} if self.config.private_key_kid else None
        return jwt.encode(
            claims, self._private_key, algorithm=self.config.private_key_alg, headers=headers
        )

    async def _token_request(self, grant: Grant, form: list[tuple[str, str]]) -> IssuedToken:
        self._breaker.check(self.name)
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            **self._client_auth(form),
        }
        started = time.perf_counter()
        result = "error"
        try:
            status, body = await self._post(form, headers)
            issued = self._interpret(status, body)
            result = "ok"
            self._breaker.success()
            return issued
        except STSRefused:
            result = "refused"
            self._breaker.success()  # the STS is up and answering
            raise
        except STSUnavailable:
            result = "unavailable"
            self._breaker.failure()
            raise
        finally:
            if self._metrics is not None:
                self._metrics.sts_calls.labels(self.name, grant.value, result).inc()
                self._metrics.sts_latency.labels(self.name, grant.value).observe(
                    time.perf_counter() - started
                )

    async def _post(
        self, form: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        url = self.config.token_url
        try:
            # Never follow a redirect: a 307/308 would re-send the body (subject token, client
            # secret or assertion) to wherever the Location header points.
            async with self._session.post(
                url,
                data=urllib.parse.urlencode(form),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if 300 <= resp.status < 400:
                    raise STSUnavailable(
                        f"token service '{self.name}' answered HTTP {resp.status} redirecting to "
                        f"{_origin(resp.headers.get('Location'), url)}; token requests are not "
                        "sent on to another address: set token_url to the final token endpoint",
                        misconfigured=True,
                    )
                raw = await resp.content.read(_MAX_BODY)
                status = resp.status
        except TimeoutError:
            raise STSUnavailable(
                f"token service '{self.name}' did not answer within {self.config.timeout_s:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise STSUnavailable(
                f"token service '{self.name}' unreachable at {url}: {_describe(exc)}"
            ) from None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return status, body if isinstance(body, dict) else None

    def _interpret(self, status: int, body: dict[str, Any] | None) -> IssuedToken:
        error = str((body or {}).get("error", ""))
        description = str((body or {}).get("error_description", ""))
        if status >= 500 or (status >= 400 and body is None):
            raise STSUnavailable(f"token service '{self.name}' answered HTTP {status}")
        # Keycloak: 401 invalid_client = our credentials are wrong; 400 unauthorized_client = the
        # grant is not enabled for our client. (400 invalid_client "Audience not found" is a
        # refusal of the requested audience, handled below.)
        if status == 401 or error == "unauthorized_client":
            raise STSUnavailable(
                f"token service '{self.name}' rejected this service's client "
                f"'{self.config.client_id}' ({error or status}); check its credentials and that "
                "the grant is enabled for it",
                misconfigured=True,
            )
        if status >= 400:
            raise STSRefused(self.name, status, error, description)
        token = (body or {}).get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            raise STSUnavailable(
                f"token service '{self.name}' answered HTTP {status} without an access_token"
            )
        expires_in = (body or {}).get("expires_in")
        return IssuedToken(
            access_token=token,
            expires_in=float(expires_in) if isinstance(expires_in, int | float) else None,
            issued_token_type=_opt_str((body or {}).get("issued_token_type")),
            scope=_opt_str((body or {}).get("scope")),
        )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _origin(location: str | None, base: str) -> str:
    """Scheme and host of a redirect target (never its path or query), for error messages."""
    if not location:
        return "nowhere (no Location header)"
    target = urllib.parse.urlsplit(urllib.parse.urljoin(base, location))
    return f"{target.scheme}://{target.netloc.rpartition('@')[2]}" if target.netloc else "?"


def _form_quote(value: str) -> str:
    return urllib.parse.quote_plus(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return redact(f"{type(exc).__name__}: {exc}")
