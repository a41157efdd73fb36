"""HTTP shell of the token exchange service (aiohttp).

- ``/check`` (any method, any sub-path: Envoy's ``path_prefix``): Envoy ext_authz HTTP check.
  200 + ``authorization: Bearer <token for x-mcp-servername>``; 401 + ``WWW-Authenticate``;
  403 ``{"allow": false, "reason"}``; 503 when Keycloak or the JWKS cannot be reached.
- ``/ext-authz/combined`` (any method, any sub-path): the same check, then the policy service's
  ext_authz check (``ext_authz.policy_url``) with the exchanged token, in one round trip, for
  gateways with a single ext_authz provider (Istio < 1.30). 200 + ``authorization`` + the policy's
  signed tool-list headers; 401/403/503 as ``/check``; the policy's 403; 503 when the policy
  service cannot answer or ``policy_url`` is unset (fail closed).
- ``POST /token``: RFC 8693 token endpoint facade (form-encoded, HTTP Basic client auth), the
  request shape Keycloak takes, answered from the cache when possible. A foreign ``Host`` (421)
  or ``Origin`` (403) is refused first (``kmg_common/host_origin.py``: DNS rebinding protection).
- ``/healthz``, ``/readyz`` (JWKS loaded, token services reachable), ``/metrics``.

``/check`` and ``/ext-authz/*`` answer only the gateway (``caller_auth``: a shared secret header or
an mTLS client certificate; 403 ``caller_unauthenticated`` otherwise), accept only tokens addressed
to the gateway (``ext_authz.audiences``) and issue tokens only for the targets the gateway routes
(``ext_authz.targets``); other targets (a cross-domain cluster) only come from ``/token``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator, protect
from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import InvalidToken, JWTValidator, ValidationUnavailable
from gateway_plugins.common.service import (
    SERVER_SSL,
    SERVICE_METRICS,
    ReadyCheck,
    add_ready_check,
    create_base_app,
    request_id_of,
)
from gateway_plugins.token_exchange.config import SERVICE, ClientAuth, Settings
from gateway_plugins.token_exchange.exchanger import Exchanger, ExchangeRefused, audiences_of
from gateway_plugins.token_exchange.facade import handle_token_request
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.policy_client import PolicyClient
from gateway_plugins.token_exchange.redis_cache import (
    SharedCacheMaterial,
    SharedTokenCache,
    load_material,
    open_shared_cache,
)
from gateway_plugins.token_exchange.sts_client import STSClient, STSUnavailable
from gateway_plugins.token_exchange.targets import TargetRegistry, UnknownTarget
from kmg_common import tracing as kt
from kmg_common.bearer import bearer_token
from kmg_common.host_origin import service_rule
from kmg_common.settings import SettingsError, read_secret

log = logging.getLogger(__name__)

COMBINED_PREFIX = "/ext-authz/combined"


@dataclass
class Runtime:
    """What the handlers use; filled in at startup (the HTTP session needs the running loop)."""

    settings: Settings
    metrics: ExchangeMetrics
    sts_secrets: dict[str, str | None]
    sts_keys: dict[str, Any]
    facade_clients: dict[str, str]
    policy_caller_headers: dict[str, str] = field(default_factory=dict)
    exchanger: Exchanger | None = None
    jwks: JWKSCache | None = None
    sts: dict[str, STSClient] = field(default_factory=dict)
    policy: PolicyClient | None = None  # set when ext_authz.policy_url is configured
    shared_cache: SharedTokenCache | None = None  # set when cache.backend is redis

    def require(self) -> Exchanger:
        if self.exchanger is None:
            raise web.HTTPServiceUnavailable(reason="Starting")
        return self.exchanger


RUNTIME = web.AppKey("token_exchange_runtime", Runtime)


def _load_private_key(path: Any, what: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SettingsError(f"{what}: cannot load PEM private key {path}: {exc}") from None


def load_credentials(
    settings: Settings,
) -> tuple[dict[str, str | None], dict[str, Any], dict[str, str]]:
    """Read every secret up front so a missing one fails at start with a clear message."""
    secrets: dict[str, str | None] = {}
    keys: dict[str, Any] = {}
    for name, sts in settings.sts.items():
        if sts.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            assert sts.private_key_file is not None
            keys[name] = _load_private_key(sts.private_key_file, f"sts.{name}.private_key_file")
            secrets[name] = None
        else:
            secrets[name] = read_secret(
                f"sts.{name}.client_secret", file=sts.client_secret_file, env=sts.client_secret_env
            )
    facade = {
        c.client_id: read_secret(
            f"facade client '{c.client_id}' client_secret",
            file=c.client_secret_file,
            env=c.client_secret_env,
        )
        for c in settings.facade.clients
    }
    return secrets, keys, facade


def policy_caller_headers(settings: Settings, caller: CallerAuthenticator) -> dict[str, str]:
    """The credential the combined check presents to the policy service's check: the secret of
    ``ext_authz.policy_caller_secret_*``, else this service's own caller secret (one shared
    secret for both plugins), else none."""
    ext = settings.ext_authz
    secret = caller.secret
    if ext.policy_caller_secret_file is not None or ext.policy_caller_secret_env is not None:
        secret = read_secret(
            "ext_authz.policy_caller_secret",
            file=ext.policy_caller_secret_file,
            env=ext.policy_caller_secret_env,
        )
    return {ext.policy_caller_header: secret} if secret else {}


def build_exchanger(runtime: Runtime, session: Any) -> Exchanger:
    """Wire validator, STS clients, targets and cache over one shared client session."""
    settings = runtime.settings
    validation = settings.validation
    jwks = JWKSCache(session, min_refetch_interval_s=validation.jwks_min_refetch_interval_s)
    validator = JWTValidator(
        validation.issuers,
        jwks,
        algorithms=validation.algorithms,
        leeway_s=validation.leeway_s,
        max_token_bytes=validation.max_token_bytes,
        verified_cache_size=validation.verified_cache_size,
        verified_cache_ttl_s=validation.verified_cache_ttl_s,
    )
    runtime.jwks = jwks
    runtime.sts = {
        name: STSClient(
            name,
            cfg,
            session,
            client_secret=runtime.sts_secrets.get(name),
            private_key=runtime.sts_keys.get(name),
            breaker=settings.breaker,
            metrics=runtime.metrics,
        )
        for name, cfg in settings.sts.items()
    }
    return Exchanger(
        validator=validator,
        targets=TargetRegistry(settings.targets),
        sts=runtime.sts,
        cache=settings.cache,
        opaque_tokens=validation.opaque_tokens,
        metrics=runtime.metrics,
        shared=runtime.shared_cache,
    )


TRACING_NAME = "mcp-token-exchange"  # service.name of its spans unless tracing.service_name


def create_app(settings: Settings) -> web.Application:
    # The ext_authz checks carry the original request's Host (Envoy's); /token is checked.
    tracer = kt.start_tracing(settings.tracing, TRACING_NAME)
    app = create_base_app(
        SERVICE,
        host_origin=service_rule(settings),
        unchecked_prefixes=("/check", COMBINED_PREFIX),
        tracing=tracer,
    )
    secrets, keys, facade = load_credentials(settings)
    caller = CallerAuthenticator(settings.caller_auth)
    runtime = Runtime(
        settings=settings,
        metrics=ExchangeMetrics(app[SERVICE_METRICS].registry),
        sts_secrets=secrets,
        sts_keys=keys,
        facade_clients=facade,
        policy_caller_headers=policy_caller_headers(settings, caller),
    )
    app[RUNTIME] = runtime
    server_ssl = caller.server_ssl_context()
    if server_ssl is not None:
        app[SERVER_SSL] = server_ssl
    shared: SharedCacheMaterial | None = None
    if settings.cache.backend == "redis":
        shared = load_material(settings.cache.redis)  # missing secrets fail the start

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        timeout = max([s.timeout_s for s in settings.sts.values()] + [3.0]) + 1.0
        session = make_client_session(
            ca_file=settings.ca_file,
            timeout_s=timeout,
            trace_configs=[tracer.client_trace_config()] if tracer is not None else None,
        )
        if shared is not None:
            runtime.shared_cache = await _open_shared(settings, shared, runtime.metrics)
        runtime.exchanger = build_exchanger(runtime, session)
        ext_authz = settings.ext_authz
        if ext_authz.policy_url is not None:
            runtime.policy = PolicyClient(
                ext_authz.policy_url,
                session,
                timeout_s=ext_authz.policy_timeout_s,
                upstream_headers=ext_authz.policy_upstream_headers,
                metrics=runtime.metrics,
                caller_headers=runtime.policy_caller_headers,
            )
        try:
            yield
        finally:
            runtime.exchanger = None
            runtime.policy = None
            await session.close()
            if runtime.shared_cache is not None:
                await runtime.shared_cache.close()
                runtime.shared_cache = None

    app.cleanup_ctx.append(lifecycle)
    add_ready_check(app, "jwks", lambda: _jwks_ready(runtime))
    for name in settings.sts:
        add_ready_check(app, f"sts:{name}", _sts_check(runtime, name))
    app.router.add_route("*", "/check{tail:.*}", protect(check, caller))
    app.router.add_route("*", COMBINED_PREFIX, protect(combined_check, caller))
    app.router.add_route("*", COMBINED_PREFIX + "/{tail:.*}", protect(combined_check, caller))
    if settings.facade.enabled:
        app.router.add_post("/token", token_endpoint)
    return app


async def _open_shared(
    settings: Settings, material: SharedCacheMaterial, metrics: ExchangeMetrics
) -> SharedTokenCache:
    """The Redis pool; an unreachable Redis is logged, not fatal (the memory cache serves)."""
    cache = open_shared_cache(settings.cache.redis, material, metrics=metrics)
    if await cache.ping():
        log.info("shared token cache: Redis at %s", settings.cache.redis.url)
    if material.password is None:
        log.warning(
            "shared token cache: no cache.redis.password_file/_env; Redis at %s is used "
            "without authentication",
            settings.cache.redis.url,
        )
    return cache


async def _jwks_ready(runtime: Runtime) -> None:
    if runtime.jwks is None:
        raise RuntimeError("starting")
    for issuer in runtime.jwks.issuers:
        await runtime.jwks.ensure_loaded(issuer)


def _sts_check(runtime: Runtime, name: str) -> ReadyCheck:
    async def check() -> None:
        client = runtime.sts.get(name)
        if client is None:
            raise RuntimeError("starting")
        await client.probe()

    return check


# -- ext_authz ----------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def _unauthorized(
    request: web.Request, settings: Settings, reason: str, *, error: bool
) -> web.Response:
    metadata = settings.ext_authz.resource_metadata_url or (
        f"https://{request.host}/.well-known/oauth-protected-resource"
    )
    challenge = f'Bearer resource_metadata="{_quote(metadata)}"'
    if error:
        challenge += f', error="invalid_token", error_description="{_quote(reason)}"'
    kt.annotate({kt.OUTCOME: "unauthenticated", kt.DECISION: "deny"})
    return web.json_response(
        {"allow": False, "error": "unauthenticated", "reason": reason},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )


def _deny(status: int, error: str, reason: str) -> web.Response:
    kt.annotate({kt.OUTCOME: error, kt.DECISION: "deny"})
    if status >= 500:
        kt.mark_error(error)
    return web.json_response({"allow": False, "error": error, "reason": reason}, status=status)


def _label(exchanger: Exchanger, target: str) -> str:
    """Metric label for a caller-supplied target: configured names only (bounded cardinality)."""
    return target if target in exchanger.targets else "-"


@dataclass(frozen=True)
class _Granted:
    """A validated caller and the token its target gets (None: pass the caller's token on)."""

    subject_token: str
    token: str | None
    exchanged: bool


async def _validate_and_exchange(
    request: web.Request, runtime: Runtime, exchanger: Exchanger
) -> _Granted | web.Response:
    """The ext_authz exchange shared by ``/check`` and ``/ext-authz/combined``: a grant, or the
    401/403/503 answer to give."""
    settings = runtime.settings
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        return _unauthorized(request, settings, "no bearer token", error=False)
    ext_authz = settings.ext_authz
    target = request.headers.get(ext_authz.target_header, "").strip()
    kt.annotate({kt.MCP_SERVER: target[:256]})
    try:
        claims = await exchanger.validate(token)
        kt.annotate({kt.USER: kt.subject_name(claims)})
        _check_gateway_audience(claims, ext_authz.audiences)
        if not target or target in ext_authz.passthrough_targets:
            return _Granted(token, None, exchanged=False)
        if target not in ext_authz.targets:
            return _not_routable(runtime, exchanger, target)
        result = await exchanger.exchange(token, target, claims=claims)
    except InvalidToken as exc:
        runtime.metrics.count(_label(exchanger, target), "invalid_token")
        return _unauthorized(request, settings, exc.reason, error=True)
    except UnknownTarget as exc:
        runtime.metrics.count("-", "unknown_target")
        return _deny(403, "unknown_target", str(exc))
    except ExchangeRefused as exc:
        runtime.metrics.count(_label(exchanger, target), "refused")
        return _deny(403, "exchange_refused", exc.reason)
    except ValidationUnavailable as exc:
        # Generic message: the caller is not authenticated yet; the detail (the issuer's URL and
        # the error) was logged where it happened.
        runtime.metrics.count(_label(exchanger, target), "unavailable")
        return _deny(503, "token_service_unavailable", str(exc))
    except STSUnavailable as exc:
        runtime.metrics.count(_label(exchanger, target), "unavailable")
        log.warning("token exchange unavailable for target %s: %s", target, exc)
        return _deny(503, "token_service_unavailable", f"{exc}; retry shortly")
    kt.annotate({kt.OUTCOME: result.outcome})
    return _Granted(token, result.token, exchanged=result.outcome != "unchanged")


def _check_gateway_audience(claims: dict[str, Any] | None, accepted: list[str]) -> None:
    """A token at the gateway's check must be addressed to the gateway (``ext_authz.audiences``):
    a token issued for a server behind it (an exchanged token) is not replayable here."""
    if not accepted:
        return
    if claims is None:
        raise InvalidToken(
            "an opaque (non-JWT) token cannot show that it is addressed to this gateway "
            "(ext_authz.audiences is set)"
        )
    if set(accepted).isdisjoint(audiences_of(claims)):
        raise InvalidToken(
            f"the token is not addressed to this gateway (its 'aud' must contain one of "
            f"{sorted(accepted)})"
        )


def _not_routable(runtime: Runtime, exchanger: Exchanger, target: str) -> web.Response:
    """403 for a target the check does not issue: unknown, or configured for /token only."""
    if target not in exchanger.targets:
        runtime.metrics.count("-", "unknown_target")
        return _deny(
            403,
            "unknown_target",
            f"no token exchange target is configured for audience '{_quote(target)[:200]}'",
        )
    runtime.metrics.count(target, "not_routable")
    return _deny(
        403,
        "target_not_routable",
        f"target '{target}' is not issued to gateway checks (ext_authz.targets); it is only "
        "available from POST /token to its authenticated clients",
    )


async def check(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    granted = await _validate_and_exchange(request, runtime, runtime.require())
    if isinstance(granted, web.Response):
        return granted
    if granted.token is None:
        return web.json_response({"allow": True, "exchanged": False})
    return web.json_response(
        {"allow": True, "exchanged": granted.exchanged},
        headers={"authorization": f"Bearer {granted.token}"},
    )


def _original_path(request: web.Request) -> str:
    """What Envoy appended to ``/ext-authz/combined`` (still URL-encoded, with its query)."""
    raw = request.raw_path
    return raw[len(COMBINED_PREFIX) :] if raw.startswith(COMBINED_PREFIX + "/") else ""


async def combined_check(request: web.Request) -> web.Response:
    """Exchange as ``/check`` does, then ask the policy service with the exchanged token."""
    runtime = request.app[RUNTIME]
    if runtime.settings.ext_authz.policy_url is None:
        runtime.metrics.policy_calls.labels("not_configured").inc()
        return _deny(
            503,
            "not_configured",
            "combined check needs ext_authz.policy_url (the policy service's ext_authz check "
            "endpoint, e.g. http://policy:8080/check); denying",
        )
    exchanger = runtime.require()
    policy = runtime.policy
    if policy is None:
        raise web.HTTPServiceUnavailable(reason="Starting")
    granted = await _validate_and_exchange(request, runtime, exchanger)
    if isinstance(granted, web.Response):
        return granted
    body = await request.read() if request.can_read_body else None
    answer = await policy.check(
        token=granted.token or granted.subject_token,
        path=_original_path(request),
        headers=request.headers,
        body=body,
        request_id=request_id_of(request) or None,
    )
    if not answer.allow:
        return _deny(answer.status, answer.error or "policy_denied", answer.reason)
    headers = dict(answer.headers)
    if granted.token is not None:
        headers["authorization"] = f"Bearer {granted.token}"
    return web.json_response(
        {"allow": True, "exchanged": granted.exchanged, "reason": answer.reason}, headers=headers
    )


# -- RFC 8693 facade ----------------------------------------------------------------------------
async def token_endpoint(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return await handle_token_request(
        request, runtime.require(), lambda cid, secret: _client_ok(runtime, cid, secret)
    )


def _client_ok(runtime: Runtime, client_id: str, secret: str) -> bool:
    expected = runtime.facade_clients.get(client_id)
    if expected is None:
        hmac.compare_digest(secret.encode(), secret.encode())  # similar timing for unknown ids
        return False
    return hmac.compare_digest(expected.encode(), secret.encode())
