"""The token exchange service's assembly: settings → runtime, lifecycle, readiness and routes.

The core the handlers use is :mod:`.service` (:class:`~.service.Runtime`), the HTTP routes are
:mod:`.routes` (the ext_authz checks run the one check pipeline of :mod:`.pipeline`). This module
reads the credentials, opens and closes what the service owns (the client session, the shared
cache), adds the readiness checks and the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator
from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.common.service import (
    SERVER_SSL,
    SERVICE_METRICS,
    ReadyCheck,
    add_ready_check,
    create_base_app,
)
from gateway_plugins.token_exchange.config import SERVICE, Settings
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.redis_cache import SharedCacheMaterial, load_material
from gateway_plugins.token_exchange.routes import COMBINED_PREFIX, add_routes
from gateway_plugins.token_exchange.service import (
    RUNTIME,
    Runtime,
    build_exchanger,
    build_policy_client,
    load_credentials,
    open_shared,
    policy_caller_headers,
)
from kmg_common import tracing as kt
from kmg_common.host_origin import service_rule

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
            runtime.shared_cache = await open_shared(settings, shared, runtime.metrics)
        runtime.exchanger = build_exchanger(runtime, session)
        runtime.policy = build_policy_client(runtime, session)
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
    add_routes(app, caller, facade=settings.facade.enabled)
    return app


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
