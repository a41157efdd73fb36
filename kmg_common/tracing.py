"""OpenTelemetry tracing of the three services: settings, the tracer, W3C propagation.

Off by default: with no ``endpoint`` :func:`start_tracing` returns ``None``, the SDK is never
imported, no provider is installed and the services add no middleware and no client hook. The
helpers that only *annotate* the current span (:func:`annotate`, :func:`record_error`,
:func:`current_trace_id`) use the OpenTelemetry API alone and do nothing then.

On, each service owns one :class:`Tracing` (its own ``TracerProvider``, not the process-global
one, so several services in one process keep their names): spans are batched to an OTLP/HTTP
collector. Sampling is decided before any span is made (:meth:`Tracing.server_span`), so an
unsampled request costs next to nothing: a request that brings a W3C ``traceparent`` follows its
caller's decision, a new trace is recorded with probability ``sampling_ratio``. Outgoing aiohttp
requests get a client span and carry it on (:meth:`Tracing.add_client_hooks`).

Attributes never hold a token: the user is its subject name (``enduser.id``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

# Span attribute names (OpenTelemetry semantic conventions where one exists).
MCP_METHOD = "mcp.method.name"
TOOL_NAME = "gen_ai.tool.name"
MCP_SERVER = "mcp.server.name"  # x-mcp-servername: which MCP server behind the gateway
CLUSTER = "k8s.cluster.name"
USER = "enduser.id"  # the subject's name (preferred_username, else sub); never a token
DECISION = "kmg.decision"  # allow / deny (policy)
OUTCOME = "kmg.outcome"  # ok / error / denied / ... (what the service answered)
REQUEST_ID = "kmg.request_id"

_PROPAGATOR = TraceContextTextMapPropagator()


class TracingSettings(BaseModel):
    """Where spans go and how many; ``endpoint`` unset = tracing off (costs nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL of the collector, e.g. "
        "http://otel-collector:4318/v1/traces; unset: tracing off (the SDK is not even loaded)",
    )
    sampling_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of new traces recorded (0..1); a request with a W3C traceparent "
        "follows its caller's sampling decision",
    )
    service_name: str | None = Field(
        default=None,
        description="service.name of the spans; default: the service's own name",
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"tracing endpoint {value!r} must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("tracing endpoint must not carry credentials")
        return value.strip()


class Tracing:
    """One service's tracer: its provider, batch exporter and propagation helpers."""

    def __init__(
        self, provider: TracerProvider, service_name: str, sampling_ratio: float = 1.0
    ) -> None:
        self.provider = provider
        self.service_name = service_name
        self.sampling_ratio = sampling_ratio
        self.tracer = provider.get_tracer("kube-mcp-gateway." + service_name)

    @contextmanager
    def server_span(
        self,
        name: str,
        headers: Mapping[str, str],
        attributes: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> Iterator[trace.Span]:
        """A SERVER span, child of the caller's ``traceparent`` when the headers carry one.

        Sampling is decided here, before the SDK is asked, so that an unsampled request costs
        almost nothing: a caller's decision is followed (not sampled: its context is made current
        without a span, so outgoing requests pass it on as it came); a request without a caller
        trace is recorded with probability ``sampling_ratio``, and otherwise gets no span and
        no context at all. ``attributes`` may be a function: called only for a recorded span."""
        parent = _PROPAGATOR.extract(headers)
        caller = trace.get_current_span(parent).get_span_context()
        if caller.is_valid and not caller.trace_flags.sampled:
            token = otel_context.attach(parent)
            try:
                yield trace.get_current_span()
            finally:
                otel_context.detach(token)
            return
        if not caller.is_valid and (
            self.sampling_ratio <= 0.0 or random.random() >= self.sampling_ratio  # noqa: S311
        ):
            yield trace.INVALID_SPAN
            return
        if callable(attributes):
            attributes = attributes()
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=_clean(attributes)
        ) as span:
            yield span

    @contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[trace.Span]:
        """A span under the current one (exceptions are recorded and mark it as an error)."""
        with self.tracer.start_as_current_span(
            name, kind=kind, attributes=_clean(attributes)
        ) as span:
            yield span

    def client_trace_config(self, peer: str | None = None) -> aiohttp.TraceConfig:
        """An aiohttp hook for a session: see :meth:`add_client_hooks`."""
        config = aiohttp.TraceConfig()
        self.add_client_hooks(config, peer)
        config.freeze()
        return config

    def add_client_hooks(self, config: aiohttp.TraceConfig, peer: str | None = None) -> None:
        """Hook ``config`` (not yet frozen) so that every request of its session carries the
        current trace as ``traceparent``, inside a CLIENT span of its own (named for the method
        and path; ``peer.service`` = ``peer`` when given) when the current span is recorded.
        Under an unsampled span no span is made: the request carries the caller's context (and
        its "not sampled" flag) as it is."""
        tracer = self.tracer

        async def on_start(
            _: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
        ) -> None:
            if not trace.get_current_span().is_recording():
                _PROPAGATOR.inject(params.headers)
                return
            url = params.url
            span = tracer.start_span(
                f"{params.method} {url.path or '/'}",
                kind=SpanKind.CLIENT,
                attributes=_clean(
                    {
                        "http.request.method": params.method,
                        "server.address": url.host or "",
                        "server.port": url.port or 0,
                        "url.path": url.path,
                        "peer.service": peer,
                    }
                ),
            )
            ctx.kmg_span = span
            _PROPAGATOR.inject(params.headers, context=trace.set_span_in_context(span))

        async def on_end(
            _: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            span = getattr(ctx, "kmg_span", None)
            if span is None:
                return
            status = params.response.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            span.end()

        async def on_error(
            _: aiohttp.ClientSession,
            ctx: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            span = getattr(ctx, "kmg_span", None)
            if span is None:
                return
            span.record_exception(params.exception)
            span.set_status(Status(StatusCode.ERROR, type(params.exception).__name__))
            span.end()

        config.on_request_start.append(on_start)
        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_error)

    def shutdown(self) -> None:
        """Export what is still queued and stop (blocking: call from a worker thread)."""
        try:
            self.provider.shutdown()
        except Exception as exc:  # a collector that is gone must not fail the shutdown
            log.warning("tracing shutdown: %s", type(exc).__name__)


def start_tracing(settings: TracingSettings, default_service_name: str) -> Tracing | None:
    """The service's tracer, or ``None`` when tracing is off (nothing loaded)."""
    if settings.endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    name = settings.service_name or default_service_name
    provider = TracerProvider(
        # roots are sampled by Tracing.server_span (sampling_ratio) before a span is made
        sampler=ParentBased(ALWAYS_ON),
        resource=Resource.create({"service.name": name}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint), schedule_delay_millis=500)
    )
    log.info(
        "tracing on: OTLP to %s, sampling ratio %g, service %s",
        settings.endpoint,
        settings.sampling_ratio,
        name,
    )
    return Tracing(provider, name, settings.sampling_ratio)


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not attributes:
        return None
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` (``None`` values skipped) on the current span, if it records."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    cleaned = _clean(attributes)
    if cleaned:
        span.set_attributes(cleaned)


def record_error(exc: BaseException, message: str | None = None) -> None:
    """Record ``exc`` on the current span and mark the span as failed (no-op without one).
    ``message`` replaces the exception's text where that could hold something private."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.record_exception(exc, attributes={"exception.message": message} if message else None)
    span.set_status(Status(StatusCode.ERROR, message or type(exc).__name__))


def mark_error(description: str) -> None:
    """Mark the current span as failed without an exception (a refusal, an error result)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, description))


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), or ``None`` outside a sampled or remote trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    """The trace id of a ``traceparent`` header (32 hex digits), None without a valid one; the
    OpenTelemetry API alone, so usable with tracing off."""
    context = trace.get_current_span(_PROPAGATOR.extract(headers)).get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to ``headers``."""
    _PROPAGATOR.inject(headers)


def subject_name(claims: Mapping[str, Any] | None) -> str | None:
    """The user a token's claims name, for ``enduser.id``: username, else subject."""
    for key in ("preferred_username", "sub"):
        value = (claims or {}).get(key)
        if isinstance(value, str) and value:
            return value[:128]
    return None
