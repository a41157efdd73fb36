"""The ASGI application: ``/mcp`` (Streamable HTTP), health, metrics, RFC 9728 metadata."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from kmg_common.tracing import start_tracing
from mcp_backend.access.policy import AccessPolicy
from mcp_backend.config import Settings, effective_clusters
from mcp_backend.kube.clusters import ClusterRegistry
from mcp_backend.metrics import Metrics
from mcp_backend.server import Handlers, build_server
from mcp_backend.tools import all_tools
from mcp_backend.transport.auth import METADATA_PATH, RequireBearer, request_resource_url
from mcp_backend.transport.direct_json_response import DirectJsonResponder
from mcp_backend.transport.host_origin_guard import (
    HostOriginGuard,
    host_origin_rule,
    transport_security,
)
from mcp_backend.transport.protocol_eras import HandshakeOnly

TRACING_NAME = "mcp-backend"  # service.name of its spans unless tracing.service_name


@dataclass
class Backend:
    """A built backend: the ASGI app plus the parts tests and benchmarks look at."""

    app: Starlette
    settings: Settings
    clusters: ClusterRegistry
    metrics: Metrics
    handlers: Handlers


def create_backend(settings: Settings) -> Backend:
    """Wire settings → registry, clusters, handlers → Starlette app (nothing connects yet)."""
    metrics = Metrics()
    tracing = start_tracing(settings.tracing, TRACING_NAME)
    access = AccessPolicy(settings.denied_kinds, redact_secrets=settings.redact_secrets)
    clusters = ClusterRegistry(effective_clusters(settings), settings, access, metrics, tracing)
    registry = all_tools().select(settings)
    handlers = Handlers(settings, registry, clusters, metrics, tracing)
    server = build_server(handlers, otel_spans=settings.otel_spans)
    rule = host_origin_rule(settings)
    security = transport_security(rule)
    manager = StreamableHTTPSessionManager(
        app=server,
        json_response=settings.json_response,
        stateless=settings.stateless,
        security_settings=security,
        max_request_body_size=DEFAULT_MAX_REQUEST_BODY_SIZE,
    )
    sdk_app: ASGIApp = StreamableHTTPASGIApp(manager)
    if settings.single_exchange and settings.stateless and settings.json_response:
        sdk_app = DirectJsonResponder(
            sdk_app, server, security, metrics, max_body_size=DEFAULT_MAX_REQUEST_BODY_SIZE
        )
    if not settings.modern_protocol:
        sdk_app = HandshakeOnly(sdk_app)
    mcp_endpoint = RequireBearer(
        sdk_app,
        resource_url=settings.resource_url,
        metrics=metrics,
        optional=settings.accept_token_in_arguments,
        binding=handlers.binding,
    )

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        # Ready once serving: clusters are reached lazily per request, so an unreachable
        # cluster must not take the whole backend out of rotation.
        return JSONResponse(
            {"status": "ready", "tools": len(registry), "clusters": sorted(clusters.clusters)}
        )

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def resource_metadata(request: Request) -> Response:
        resource = request_resource_url(request.scope, settings.resource_url)
        return JSONResponse(
            {
                "resource": resource,
                "authorization_servers": settings.authorization_servers,
                "bearer_methods_supported": ["header"],
                "resource_name": "Kubernetes MCP backend",
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            try:
                yield
            finally:
                await clusters.close()
                if tracing is not None:
                    await asyncio.to_thread(tracing.shutdown)

    app = Starlette(
        routes=[
            Route("/mcp", endpoint=mcp_endpoint, methods=["GET", "POST", "DELETE"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route(METADATA_PATH, resource_metadata),
            Route(METADATA_PATH + "/mcp", resource_metadata),
        ],
        middleware=[Middleware(HostOriginGuard, rule=rule, metrics=metrics)],
        lifespan=lifespan,
    )
    return Backend(
        app=app, settings=settings, clusters=clusters, metrics=metrics, handlers=handlers
    )


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for ``settings``."""
    return create_backend(settings).app
