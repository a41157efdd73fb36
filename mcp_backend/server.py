"""The MCP request handlers: tools/list, tools/call, prompts, ping, logging/setLevel.

Built on the SDK's low-level ``Server`` so each tool's input schema is exactly the reference
server's (names, defaults, required). Tool failures become ``isError`` results with a clear
message; unknown tools and malformed requests are JSON-RPC errors.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError

from kmg_common import tracing as kt
from kmg_common.logging import request_id_var
from mcp_backend import __version__
from mcp_backend.audit import audited_arguments, caller_of, trace_id
from mcp_backend.config import Settings
from mcp_backend.errors import AccessDenied, Busy, ToolFailure
from mcp_backend.helm.runner import HelmRunner
from mcp_backend.kube.clusters import ClusterRegistry
from mcp_backend.metrics import Metrics
from mcp_backend.prompts import CLUSTER_HEALTH_CHECK, cluster_health_check
from mcp_backend.tools.base import ToolContext, ToolRegistry, ToolSpec
from mcp_backend.transport.auth import TokenBinding, scope_token
from mcp_backend.transport.caller_limits import CallLimiter

log = logging.getLogger("mcp_backend.calls")
TOKEN_ARGUMENT = "access_token"  # noqa: S105 - an argument name, not a secret
INSTRUCTIONS = (
    "Kubernetes tools acting with the caller's own identity: the API server's RBAC decides. "
    "Lists are compact tables (output='yaml' for full objects) paged with limit/continue. "
    "Start with workload_diagnose when something is failing. Pass `context` to pick a cluster."
)


def tool_definition(spec: ToolSpec) -> types.Tool:
    a = spec.annotations
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema(),
        annotations=types.ToolAnnotations(
            title=spec.title,
            read_only_hint=a.read_only,
            destructive_hint=a.destructive,
            idempotent_hint=a.idempotent,
            open_world_hint=a.open_world,
        ),
    )


def _headers(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, str]:
    request = ctx.request
    headers = getattr(request, "headers", None)
    return headers if headers is not None else {}


def _header_token(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The bearer token the auth middleware parsed from this request's headers."""
    scope = getattr(ctx.request, "scope", None)
    return scope_token(scope) if isinstance(scope, Mapping) else None


class Handlers:
    """State shared by the handlers of one backend instance."""

    def __init__(
        self,
        settings: Settings,
        registry: ToolRegistry,
        clusters: ClusterRegistry,
        metrics: Metrics,
        tracing: kt.Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.registry = registry
        self.clusters = clusters
        self.metrics = metrics
        self.helm = HelmRunner(
            settings.helm_binary, settings.helm_timeout_s, settings.max_response_bytes
        )
        self.binding = TokenBinding.from_settings(settings)
        self.limiter = CallLimiter(settings.max_concurrent_calls_per_user)
        self._tools = types.ListToolsResult(tools=[tool_definition(s) for s in registry])
        self._schemas = {t.name: t.input_schema for t in self._tools.tools}
        self.client_log_level: str = "info"

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """A tool's input schema, for the SDK's ``Mcp-Param-*`` header check on the 2026
        protocol (without it the SDK runs the whole ``tools/list`` on every ``tools/call``)."""
        return self._schemas.get(name)

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return self._tools

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        spec = self.registry.get(params.name)
        if spec is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {params.name!r}; tools/list shows the tools available",
            )
        headers = _headers(ctx)
        header_token = _header_token(ctx)
        if self.tracing is None:
            return await self._call_tool(spec, params, headers, header_token)
        with self.tracing.server_span(
            f"tools/call {spec.name}",
            headers,
            {
                kt.MCP_METHOD: "tools/call",
                kt.TOOL_NAME: spec.name,
                kt.MCP_SERVER: headers.get("x-mcp-servername"),
            },
        ):
            return await self._call_tool(spec, params, headers, header_token)

    async def _call_tool(
        self,
        spec: ToolSpec,
        params: types.CallToolRequestParams,
        headers: Mapping[str, str],
        header_token: str | None,
    ) -> types.CallToolResult:
        rid = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request_id_var.set(rid)
        args = dict(params.arguments or {})
        arg_token = args.pop(TOKEN_ARGUMENT, None)  # stripped always; never in a schema or log
        token = header_token
        if token is None and self.settings.accept_token_in_arguments and isinstance(arg_token, str):
            token = arg_token.strip() or None
        cluster = self._cluster_label(args.get("context"))
        caller = caller_of(token)
        if self.tracing is not None:
            kt.annotate({kt.REQUEST_ID: rid, kt.CLUSTER: cluster, kt.USER: caller.user})
        started = time.perf_counter()
        outcome = "ok"
        try:
            if token is None:
                raise ToolFailure(
                    "no bearer token: send 'Authorization: Bearer <token>'"
                    + (
                        " or an access_token argument"
                        if self.settings.accept_token_in_arguments
                        else ""
                    )
                )
            if self.binding.is_discovery(token):
                raise ToolFailure(
                    "token refused: the MCP Gateway's discovery credential lists tools, it "
                    "cannot call them; call through the gateway with your own token"
                )
            refused = self.binding.problem(token)
            if refused is not None:  # an argument's token (header tokens were checked already)
                raise ToolFailure(f"token refused: {refused}")
            ctx_tool = ToolContext(
                settings=self.settings,
                clusters=self.clusters,
                helm=self.helm,
                token=token,
                args=args,
            )
            with self.limiter.slot(token):
                output = await spec.handler(ctx_tool)
            if output.is_error:
                outcome = "error"
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=output.text)],
                structured_content=output.structured,
                is_error=output.is_error,
            )
        except ToolFailure as exc:
            outcome = "error"
            if isinstance(exc, AccessDenied):
                outcome = "denied"
            elif isinstance(exc, Busy):
                outcome = "busy"
            structured = {"error": exc.message, **exc.details} if exc.details else None
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=exc.message)],
                structured_content=structured,
                is_error=True,
            )
        except Exception as exc:
            outcome = "error"
            log.exception("tool %s failed unexpectedly", spec.name, extra={"tool": spec.name})
            kt.record_error(exc, f"internal error in {spec.name}: {type(exc).__name__}")
            result = types.CallToolResult(
                content=[
                    types.TextContent(
                        type="text",
                        text=f"internal error in {spec.name} (request id {rid}); the server "
                        "log has "
                        "the details. Retry, or report the request id.",
                    )
                ],
                is_error=True,
            )
        elapsed = time.perf_counter() - started
        if self.tracing is not None:
            kt.annotate({kt.OUTCOME: outcome})
            if outcome != "ok":
                kt.mark_error(outcome)
        self.metrics.tool_calls.labels(spec.name, cluster, outcome).inc()
        self.metrics.tool_seconds.labels(spec.name, cluster).observe(elapsed)
        log.info(
            "tool call",
            extra={
                "audit": True,
                "trace_id": trace_id(headers),
                "user": caller.user,
                "groups": list(caller.groups),
                "client": caller.client,
                "tool": spec.name,
                "cluster": cluster,
                "arguments": audited_arguments(args),
                "outcome": outcome,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes": sum(
                    len(c.text.encode()) for c in result.content if isinstance(c, types.TextContent)
                ),
            },
        )
        return result

    def _cluster_label(self, context: object) -> str:
        """The cluster a call named, for metrics and logs: a configured name only, so a
        caller cannot grow the label set (or write into the log) with made-up contexts."""
        if not context:
            return self.clusters.default.name
        if isinstance(context, str) and context in self.clusters.clusters:
            return context
        return "unknown"

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[CLUSTER_HEALTH_CHECK])

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        if params.name != CLUSTER_HEALTH_CHECK.name:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name!r}")
        try:
            return cluster_health_check(params.arguments)
        except ToolFailure as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=exc.message) from None

    async def set_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        self.client_log_level = params.level
        return types.EmptyResult()

    async def ping(
        self, ctx: ServerRequestContext[Any, Any], params: types.RequestParams | None
    ) -> types.EmptyResult:
        return types.EmptyResult()


LISTEN_STREAMS_MAX = 64  # concurrent subscriptions/listen streams (each one open request)


def build_server(handlers: Handlers, *, otel_spans: bool = False) -> Server[Any]:
    """The low-level MCP server wired to ``handlers``."""
    server: Server[Any] = Server(
        "kube-mcp-backend",
        version=__version__,
        title="Kubernetes MCP backend",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=handlers.tool_input_schema,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_prompts=handlers.list_prompts,
        on_get_prompt=handlers.get_prompt,
        on_ping=handlers.ping,
        # 2026-07-28 clients (the MCP Gateway's broker among them) open a subscriptions/listen
        # stream right after server/discover and drop the connection when it is refused. Our
        # lists never change, so a stream carries only its acknowledgement; bounded in number.
        on_subscriptions_listen=ListenHandler(
            InMemorySubscriptionBus(), max_subscriptions=LISTEN_STREAMS_MAX
        ),
    )
    # Registered directly: the constructor argument warns that the capability is deprecated
    # in the 2026 protocol, but clients on the 2025 protocol still send it.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, handlers.set_level)
    if not otel_spans:  # the SDK's span middleware is on by default; a measurable cost per call
        server.middleware[:] = [
            m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"
        ]
    return server
