"""aiohttp scaffolding shared by the plugin services.

:func:`create_base_app` returns an application with: a request-id middleware (honours or sets
``x-request-id``), an error middleware (every failure becomes a JSON error, never a stack trace),
request counters and latency histograms in a per-app Prometheus registry, ``/healthz``,
``/readyz`` (pluggable async checks) and ``/metrics``, (given a rule) the Host and Origin
checks of ``host_origin`` on the other routes, and (given a tracer) a server span per request,
child of the caller's W3C ``traceparent``. :func:`run_app` serves it until SIGTERM or
SIGINT and shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from gateway_plugins.common.middlewares import (
    ServiceMetrics,
    error_middleware,
    host_origin_middleware,
    metrics_middleware,
    request_id_middleware,
    tracing_middleware,
)
from kmg_common import tracing as kt
from kmg_common.host_origin import HostOriginRule
from kmg_common.logging import redact

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[None]]
"""A readiness check: returns when ready, raises (with a short, secret-free message) when not."""


class NotReady(Exception):
    """Raised by a readiness check; the message is shown on ``/readyz``."""


@dataclass
class ReadinessChecks:
    checks: dict[str, ReadyCheck] = field(default_factory=dict)
    timeout_s: float = 3.0


SERVICE_METRICS = web.AppKey("kmg_metrics", ServiceMetrics)
READINESS = web.AppKey("kmg_readiness", ReadinessChecks)
SERVICE_NAME = web.AppKey("kmg_service", str)
# The service's tracer when its ``tracing.endpoint`` is set (absent: tracing off).
TRACING = web.AppKey("kmg_tracing", kt.Tracing)
# Set by an app that serves HTTPS (caller_auth mode mtls); :func:`serve` then listens with it.
SERVER_SSL = web.AppKey("kmg_server_ssl", ssl.SSLContext)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SERVICE_NAME]})


async def _run_check(name: str, check: ReadyCheck, timeout_s: float) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(check(), timeout_s)
    except TimeoutError:
        return name, f"check timed out after {timeout_s:g}s"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return name, redact(str(exc)) or type(exc).__name__
    return name, None


async def _readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    results = await asyncio.gather(
        *(_run_check(n, c, readiness.timeout_s) for n, c in readiness.checks.items())
    )
    checks = {name: (problem or "ok") for name, problem in results}
    ready = all(problem is None for _, problem in results)
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICE_METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def create_base_app(
    service: str,
    *,
    ready_checks: dict[str, ReadyCheck] | None = None,
    client_max_size: int = 1024 * 1024,
    host_origin: HostOriginRule | None = None,
    unchecked_prefixes: tuple[str, ...] = (),
    tracing: kt.Tracing | None = None,
) -> web.Application:
    """An app with the shared middlewares and the health, readiness and metrics routes; with
    ``host_origin``, every other route outside ``unchecked_prefixes`` checks Host and Origin;
    with ``tracing``, a span per request (exported until the app's cleanup)."""
    metrics = ServiceMetrics(service)
    middlewares: list[Middleware] = [request_id_middleware, metrics_middleware(metrics)]
    if tracing is not None:
        middlewares.append(tracing_middleware(tracing))
    middlewares.append(error_middleware)
    if host_origin is not None:
        middlewares.append(host_origin_middleware(host_origin, unchecked_prefixes))
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[SERVICE_NAME] = service
    app[SERVICE_METRICS] = metrics
    app[READINESS] = ReadinessChecks(dict(ready_checks or {}))
    if tracing is not None:
        app[TRACING] = tracing

        async def stop_tracing(_: web.Application) -> None:
            await asyncio.to_thread(tracing.shutdown)

        app.on_cleanup.append(stop_tracing)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def add_ready_check(app: web.Application, name: str, check: ReadyCheck) -> None:
    app[READINESS].checks[name] = check


async def serve(
    app: web.Application, host: str, port: int, stop: asyncio.Event, shutdown_timeout: float = 10.0
) -> None:
    """Serve until ``stop`` is set, then drain in-flight requests and run cleanup hooks."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        context = app.get(SERVER_SSL)
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        scheme = "https" if context is not None else "http"
        log.info("%s listening on %s://%s:%d", app[SERVICE_NAME], scheme, host, port)
        await stop.wait()
        log.info("%s shutting down", app[SERVICE_NAME])
    finally:
        await runner.cleanup()


def run_app(app: web.Application, host: str, port: int, shutdown_timeout: float = 10.0) -> None:
    """Blocking entry point for CLIs: serve until SIGTERM/SIGINT, then shut down gracefully
    (over HTTPS when the app set :data:`SERVER_SSL`)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, host, port, stop, shutdown_timeout)

    asyncio.run(main())
