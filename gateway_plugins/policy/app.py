"""The policy service's assembly: settings → engine, signer, reloader, service and routes.

The decision core is :mod:`.service` (:class:`PolicyService`), the HTTP routes are :mod:`.routes`
(each a few steps run by the one decision pipeline of :mod:`.pipeline`). This module builds the
engine and the policy source from the settings, starts and stops what the service owns, and wires
the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator
from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import JWTValidator
from gateway_plugins.common.service import (
    SERVER_SSL,
    SERVICE_METRICS,
    add_ready_check,
    create_base_app,
)
from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy.config import SERVICE, PolicySettings
from gateway_plugins.policy.decision_log import DecisionLog
from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.engine_guard import verify_embedded
from gateway_plugins.policy.engines import DecisionEngine
from gateway_plugins.policy.input import Catalogue, InputError
from gateway_plugins.policy.live_engine import LiveEngine
from gateway_plugins.policy.opa_engine import OpaOptions, OpaServerEngine
from gateway_plugins.policy.policy_files import load_file_source
from gateway_plugins.policy.policy_source import PolicySource
from gateway_plugins.policy.rbac_list import RbacListFilter, RbacMetrics
from gateway_plugins.policy.reloader import (
    AwaitingPolicy,
    PolicyReloader,
    ReloadMetrics,
    make_poller,
    reloading_enabled,
)
from gateway_plugins.policy.routes import add_routes
from gateway_plugins.policy.service import SLOT, PolicyService, ServiceMetrics, ServiceSlot
from gateway_plugins.policy.wristband import WristbandSigner, load_signing_key
from kmg_common import tracing as kt
from kmg_common.host_origin import service_rule

log = logging.getLogger(__name__)


def load_catalogue_file(path: Path | None) -> Catalogue | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read catalogue file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"catalogue file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"catalogue file {path} must hold {{server: [tool, ...]}}")
    return policy_input.load_catalogue(doc)


def build_source(settings: PolicySettings) -> PolicySource:
    """The policy files (a mounted ConfigMap read at one version: see :mod:`.reloader`)."""
    return load_file_source(settings, load_catalogue_file)


def build_engine(settings: PolicySettings, source: PolicySource) -> DecisionEngine:
    """The configured engine; the embedded one only after it proved to decide like OPA
    (:mod:`gateway_plugins.policy.engine_guard`), else :class:`PolicySourceError`."""
    if settings.engine == "embedded":
        checked = verify_embedded(source, settings.policies_dir, settings.embedded_verify)
        log.info("embedded engine verified: %s", checked.summary())
    token = None
    if settings.opa.token_file is not None:
        token = settings.opa.token_file.read_text(encoding="utf-8").strip()
    options = OpaOptions(
        url=settings.opa.url,
        timeout_s=settings.opa.timeout_s,
        load_policies=settings.opa.load_policies,
        token=token,
        ca_file=settings.opa.ca_file,
    )
    return create_engine(settings.engine, source, options, cache_size=settings.decision_cache_size)


def create_engine(
    kind: str, source: PolicySource, opa: OpaOptions | None = None, *, cache_size: int = 4096
) -> DecisionEngine:
    if kind == "embedded":
        return EmbeddedEngine(source, cache_size=cache_size)
    if kind == "opa":
        return OpaServerEngine(source, opa or OpaOptions())
    raise ValueError(f"unknown engine {kind!r}; choose embedded or opa")


@dataclass
class _Reloading:
    """The reloader's background task and the bundle service's connection pool."""

    task: asyncio.Task[None]
    session: aiohttp.ClientSession | None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.session is not None:
            await self.session.close()


async def _start_reloader(
    app: web.Application,
    settings: PolicySettings,
    live: LiveEngine,
    service: PolicyService,
    source: PolicySource | None,
    metrics: ReloadMetrics,
) -> _Reloading:
    session = None
    if settings.bundle.url is not None:
        session = make_client_session(
            ca_file=settings.bundle.ca_file, timeout_s=settings.bundle.timeout_s
        )
    reloader = PolicyReloader(
        settings,
        live,
        build=lambda new: build_engine(settings, new),
        read_catalogue=load_catalogue_file,
        on_change=service.policy_changed,
        metrics=metrics,
        active=source,
        poller=make_poller(settings, session) if session is not None else None,
    )
    app[SLOT].reloader = reloader
    if source is None:
        await reloader.check()  # the first bundle before serving (decisions 503 until then)
    return _Reloading(asyncio.create_task(reloader.run()), session)


TRACING_NAME = "mcp-policy"  # service.name of its spans unless tracing.service_name


def create_app(
    settings: PolicySettings,
    *,
    engine: DecisionEngine | None = None,
    decision_log: DecisionLog | None = None,
) -> web.Application:
    """The service; ``engine`` may be passed in (tests share one; it is never reloaded),
    otherwise built from settings and kept current by a :class:`PolicyReloader`."""
    # bundle.url: the policy comes from the bundle service once the service runs
    source = build_source(settings) if settings.bundle.url is None else None
    signer = None
    if settings.wristband.signing_key_file is not None:
        signer = WristbandSigner(
            load_signing_key(settings.wristband.signing_key_file),
            issuer=settings.wristband.issuer,
            lifetime_s=settings.wristband.lifetime_s,
            form=settings.wristband.form,
            key_id=settings.wristband.key_id,
        )
    caller = CallerAuthenticator(settings.caller_auth)
    owns_engine = engine is None
    the_engine: DecisionEngine
    live: LiveEngine | None = None
    if engine is not None:
        the_engine = engine
    else:
        first = (
            build_engine(settings, source)
            if source is not None
            else AwaitingPolicy(settings.engine, str(settings.bundle.url))
        )
        the_engine = live = LiveEngine(first)
    # The ext_authz check carries the original request's Host (Envoy's); the rest is checked.
    tracer = kt.start_tracing(settings.tracing, TRACING_NAME)
    app = create_base_app(
        SERVICE,
        client_max_size=settings.max_body_bytes,
        host_origin=service_rule(settings),
        unchecked_prefixes=("/check",),
        tracing=tracer,
    )
    server_ssl = caller.server_ssl_context()
    if server_ssl is not None:
        app[SERVER_SSL] = server_ssl
    registry = app[SERVICE_METRICS].registry
    metrics = ServiceMetrics.register(registry)
    reload_metrics = ReloadMetrics.register(registry)
    rbac_metrics = RbacMetrics.register(registry)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = make_client_session(ca_file=settings.auth.ca_file, timeout_s=5.0)
        jwks_cache = JWKSCache(
            session, min_refetch_interval_s=settings.auth.jwks_min_refetch_interval_s
        )
        validator = JWTValidator(
            settings.auth.issuers,
            jwks_cache,
            algorithms=settings.auth.algorithms,
            leeway_s=settings.auth.leeway_s,
            verified_cache_ttl_s=settings.auth.verified_cache_ttl_s,
        )
        log_sink = (
            decision_log
            if decision_log is not None
            else DecisionLog(settings.decision_log, enabled=settings.decision_log is not None)
        )
        service = PolicyService(
            settings,
            the_engine,
            validator,
            signer,
            log_sink,
            source.catalogue if source is not None else None,
            metrics,
        )
        if settings.rbac_list.enabled:
            service.rbac = RbacListFilter(settings.rbac_list, rbac_metrics)
            await service.rbac.start()
        app[SLOT].service = service
        if owns_engine:
            await the_engine.start()
        reloading = None
        if live is not None and reloading_enabled(settings):
            reloading = await _start_reloader(app, settings, live, service, source, reload_metrics)

        async def engine_ready() -> None:
            await the_engine.check_ready()

        async def issuer_keys() -> None:
            for issuer in validator.issuers:
                await jwks_cache.ensure_loaded(issuer)

        add_ready_check(app, "engine", engine_ready)
        add_ready_check(app, "issuer_keys", issuer_keys)
        try:
            yield
        finally:
            if reloading is not None:
                await reloading.stop()
            if owns_engine:
                await the_engine.close()
            if decision_log is None:
                log_sink.close()
            if service.rbac is not None:
                await service.rbac.close()
            await session.close()
            app[SLOT].service = None

    app[SLOT] = ServiceSlot()
    app.cleanup_ctx.append(lifecycle)
    add_routes(app, caller)
    return app
