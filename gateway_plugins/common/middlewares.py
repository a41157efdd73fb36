"""The middlewares every plugin service runs (:func:`~.service.create_base_app` installs them).

In order: the request id (honours a well-formed ``x-request-id`` or sets one, for logs and
answers), the HTTP metrics (:class:`ServiceMetrics`: the app's own Prometheus registry), with
tracing a server span per request (child of the caller's W3C ``traceparent``), the JSON errors
(every failure becomes a JSON error, never a stack trace) and, given a rule, the Host and Origin
checks of ``host_origin`` (DNS rebinding protection) on the routes that are not probes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from kmg_common import tracing as kt
from kmg_common.host_origin import PROBE_PATHS, HostOriginRule
from kmg_common.logging import redact, request_id_var, trace_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

REQUEST_ID = web.RequestKey("kmg_request_id", str)


@dataclass
class ServiceMetrics:
    """The app's own Prometheus registry (so several apps can live in one process)."""

    service: str
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests served, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency, by route and method.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request (labelled children are cached: this runs on every request)."""
        if method not in _METHODS:
            method = "OTHER"  # bounded label values, whatever clients send
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self.requests.labels(route, method, str(status))
            self._counters[(route, method, status)] = counter
        counter.inc()
        timer = self._timers.get((route, method))
        if timer is None:
            timer = self.latency.labels(route, method)
            self._timers[(route, method)] = timer
        timer.observe(seconds)


def json_error(
    status: int,
    error: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> web.Response:
    """A JSON error body ``{"error", "message", ...}``; the message must already be token-free."""
    body: dict[str, object] = {"error": error, "message": message, **extra}
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    return web.json_response(body, status=status, headers=headers)


def request_id_of(request: web.Request) -> str:
    value: str = request.get(REQUEST_ID, "")
    return value


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    # the caller's trace id (logs, decision log), also when this service does not trace
    trace = trace_id_var.set(
        kt.trace_id_of(request.headers) if "traceparent" in request.headers else None
    )
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        trace_id_var.reset(trace)
        request_id_var.reset(token)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(
            exc.status,
            re.sub(r"\W+", "_", (exc.reason or "error").lower()).strip("_"),
            f"{exc.reason}: {request.method} {request.path}",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        detail = redact(f"{type(exc).__name__}: {exc}")
        log.error(
            "unhandled error in %s %s: %s", request.method, request.path, detail, exc_info=True
        )
        kt.record_error(exc, detail)
        return json_error(
            500,
            "internal_error",
            "internal error; the service log has details under this request id",
        )


def metrics_middleware(metrics: ServiceMetrics) -> Middleware:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe(
                _route_label(request), request.method, status, time.perf_counter() - started
            )

    return middleware


# Headers the gateway (Envoy + the MCP router) puts on check requests: span attributes.
_MCP_HEADER_ATTRIBUTES = (
    ("x-mcp-method", kt.MCP_METHOD),
    ("x-mcp-toolname", kt.TOOL_NAME),
    ("x-mcp-servername", kt.MCP_SERVER),
)


def tracing_middleware(tracer: kt.Tracing) -> Middleware:
    """A SERVER span per request (not for the probes and /metrics), child of the caller's
    ``traceparent``; the MCP routing headers and the status become attributes, a 5xx or an
    exception marks it failed."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = _route_label(request)
        if route in PROBE_PATHS:
            return await handler(request)

        def attributes() -> dict[str, Any]:  # only for a recorded span
            found: dict[str, Any] = {
                "http.request.method": request.method,
                "http.route": route,
                kt.REQUEST_ID: request.get(REQUEST_ID),
            }
            for header, name in _MCP_HEADER_ATTRIBUTES:
                value = request.headers.get(header)
                if value:
                    found[name] = value[:256]
            return found

        with tracer.server_span(f"{request.method} {route}", request.headers, attributes) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                span.set_attribute("http.response.status_code", exc.status)
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                kt.mark_error(f"HTTP {response.status}")
            return response

    return middleware


def _unchecked_route(request: web.Request, unchecked_prefixes: tuple[str, ...]) -> bool:
    """Whether the handler about to run is a probe or an ext_authz check route: decided on the
    pattern of the route that matched (``/check``, ``/check/{tail}``, ``/check{tail}``), not on
    the raw path, so neither a path nor a later route such as ``/checkout`` gets through an
    exempt prefix."""
    resource = request.match_info.route.resource
    if resource is None:  # nothing matched: the 404/405 answer is checked like any other
        return False
    pattern = resource.canonical
    return pattern in PROBE_PATHS or any(
        pattern == prefix or pattern.startswith((prefix + "/", prefix + "{"))
        for prefix in unchecked_prefixes
    )


def host_origin_middleware(rule: HostOriginRule, unchecked_prefixes: tuple[str, ...]) -> Middleware:
    """Refuse a foreign Host (421) or Origin (403) with a JSON error; the probes and the routes
    under ``unchecked_prefixes`` (ext_authz checks: Envoy sends them the original request's Host)
    are not checked."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if _unchecked_route(request, unchecked_prefixes):
            return await handler(request)
        path = request.path
        refusal = rule.refusal(request.headers.get("Host"), request.headers.get("Origin"))
        if refusal is None:
            return await handler(request)
        log.warning("refused %s %s: %s", request.method, path, refusal.message)
        # The services' deny shape (explicit allow: false, error, reason): Authorino reads the
        # body of a metadata call whatever its status.
        body: dict[str, object] = {
            "allow": False,
            "error": refusal.error,
            "reason": refusal.message,
        }
        body["request_id"] = request_id_var.get() or request_id_of(request)
        return web.json_response(body, status=refusal.status)

    return middleware
