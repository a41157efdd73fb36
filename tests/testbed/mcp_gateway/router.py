"""STAND-IN for the MCP Gateway router, as an Envoy ext_authz HTTP service.

Envoy sends every ``/mcp`` request here first (``with_request_body``); the answer's ``x-mcp-*``
headers are copied onto the request (``allowed_upstream_headers``) before the token-exchange and
policy checks run, and ``clear_route_cache`` lets Envoy route ``tools/call`` to the MCP server
named by ``x-mcp-servername`` and everything else to the broker.

Behaviour follows upstream ``internal/mcp-router/request_handlers.go``:

* the body is parsed with a real JSON parser and validated (``jsonrpc == "2.0"``, a method, an
  id unless it is a notification); invalid → 400 with a JSON-RPC error naming the problem;
* ``tools/call``: ``x-mcp-method``, ``x-mcp-servername`` (the server owning the tool),
  ``x-mcp-toolname`` and, when the server's ``tools/list`` gave annotations,
  ``x-mcp-annotation-hints`` (``readOnly=..,destructive=..,idempotent=..,openWorld=..``); a
  ``tools/call`` without a tool name → 400;
* an unknown tool goes to the broker, which answers the upstream's "Tool not found" result;
* every other request: ``x-mcp-method`` and ``x-mcp-servername: mcpBroker``.

Differences from upstream, on purpose: no gateway sessions (the backend is stateless, so the
router's hairpin ``initialize`` per backend session is not needed), no tool prefixes (ext_authz
cannot rewrite the body). The catalogue of tools comes from the server's real ``tools/list``
(learnt by the broker, or fetched here with the caller's own bearer token when a tool is unknown,
as upstream does for servers with per-user tool lists).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.testbed.mcp_gateway.config import (
    BROKER_SERVER_NAME,
    Catalogue,
    GatewayConfig,
    Server,
    annotation_hints,
)

log = logging.getLogger("mcp_gateway.router")

H_METHOD = "x-mcp-method"
H_SERVER = "x-mcp-servername"
H_TOOL = "x-mcp-toolname"
H_HINTS = "x-mcp-annotation-hints"
MCP_ACCEPT = "application/json, text/event-stream"


class InvalidRequest(Exception):
    """The body is not an MCP JSON-RPC request the gateway can route."""

    def __init__(self, message: str, code: int = -32600) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Parsed:
    method: str | None  # None: a JSON-RPC response from the client (no routing information)
    tool: str | None


def parse_body(body: bytes) -> Parsed | None:
    """The routing-relevant parts of one JSON-RPC message; None for an empty body (GET/DELETE).

    Raises :class:`InvalidRequest` with a message saying what is wrong.
    """
    if not body.strip():
        return None
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Parse error: the body is not valid JSON ({exc})", -32700) from None
    if isinstance(message, list):
        raise InvalidRequest("JSON-RPC batches are not supported by MCP 2025-06-18: send one")
    if not isinstance(message, dict):
        raise InvalidRequest("the body must be a JSON-RPC object")
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('json rpc version invalid: "jsonrpc" must be "2.0"')
    method = message.get("method")
    if method is None and ("result" in message or "error" in message):
        return Parsed(method=None, tool=None)  # the client's answer to a server request
    if not isinstance(method, str) or not method:
        raise InvalidRequest("no method set in json rpc payload")
    if "id" not in message and not method.startswith("notifications/"):
        raise InvalidRequest(f"no id set in json rpc payload for non-notification method {method}")
    tool = None
    if method == "tools/call":
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest("no tool name set: tools/call needs params.name", -32602)
        tool = name
    return Parsed(method=method, tool=tool)


def headers_for(parsed: Parsed | None, catalogue: Catalogue) -> dict[str, str]:
    """The ``x-mcp-*`` headers for a parsed request (the catalogue must already know the tool)."""
    if parsed is None:
        return {H_SERVER: BROKER_SERVER_NAME}
    headers: dict[str, str] = {}
    if parsed.method:
        headers[H_METHOD] = parsed.method
    if parsed.method == "tools/call" and parsed.tool:
        known = catalogue.lookup(parsed.tool)
        if known is not None:
            server, annotations = known
            headers[H_SERVER] = server
            headers[H_TOOL] = parsed.tool
            if annotations is not None:
                headers[H_HINTS] = annotation_hints(annotations)
            return headers
        headers[H_TOOL] = parsed.tool  # unknown tool: the broker answers "Tool not found"
    headers[H_SERVER] = BROKER_SERVER_NAME
    return headers


def jsonrpc_error(code: int, message: str, status: int) -> web.Response:
    return web.json_response(
        {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}, status=status
    )


async def fetch_tools(
    session: aiohttp.ClientSession, server: Server, authorization: str | None
) -> list[Any]:
    """The server's real ``tools/list`` (MCP Streamable HTTP, JSON or SSE answer)."""
    headers = {"content-type": "application/json", "accept": MCP_ACCEPT}
    if authorization:
        headers["authorization"] = authorization
    body = {"jsonrpc": "2.0", "id": "gateway-catalogue", "method": "tools/list", "params": {}}
    timeout = aiohttp.ClientTimeout(total=15)
    async with session.post(server.url, json=body, headers=headers, timeout=timeout) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"{server.name}: tools/list answered HTTP {resp.status}")
        ctype = resp.headers.get("content-type", "")
    messages = sse_messages(text) if ctype.startswith("text/event-stream") else [json.loads(text)]
    for message in messages:
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            return list(result["tools"])
    raise RuntimeError(f"{server.name}: tools/list answer has no result.tools")


def sse_messages(text: str) -> list[Any]:
    """The JSON payloads of an SSE stream's ``data:`` events."""
    out = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].lstrip() for line in event.split("\n") if line.startswith("data:")
        )
        if data:
            out.append(json.loads(data))
    return out


@dataclass
class Router:
    config: GatewayConfig
    catalogue: Catalogue
    session: aiohttp.ClientSession | None = None
    _refresh: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def ensure_known(self, tool: str, authorization: str | None) -> None:
        """Fetch the servers' tool lists when ``tool`` is unknown: single flight per server, and
        at most once per ``catalogue_ttl_s`` (unknown tools must not cause a fetch storm)."""
        if self.catalogue.lookup(tool) is not None or self.session is None:
            return
        for server in self.config.servers:
            lock = self._refresh.setdefault(server.name, asyncio.Lock())
            async with lock:
                if self.catalogue.lookup(tool) is not None:
                    return
                if self.catalogue.fresh(server.name):
                    continue
                try:
                    self.catalogue.learn(
                        server.name, await fetch_tools(self.session, server, authorization)
                    )
                except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
                    log.warning("cannot list the tools of %s: %s", server.name, exc)

    async def check(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            parsed = parse_body(body)
        except InvalidRequest as exc:
            log.info("invalid MCP request refused: %s", exc.message)
            return jsonrpc_error(exc.code, exc.message, 400)
        if parsed is not None and parsed.tool:
            await self.ensure_known(parsed.tool, request.headers.get("authorization"))
        headers = headers_for(parsed, self.catalogue)
        log.debug("route %s", headers)
        return web.Response(status=200, headers=headers)


def create_router_app(router: Router) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/route{tail:.*}", router.check)
    return app
