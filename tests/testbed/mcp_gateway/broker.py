"""STAND-IN for the MCP Gateway broker: the ``/mcp`` backend of every request the router marks
``x-mcp-servername: mcpBroker``.

It proxies to the MCP server (one connection pool) and filters ``tools/list`` results by the
signed tool-list header exactly as upstream ``internal/broker/filtered_tools_handler.go`` does:

* header ``x-mcp-authorized`` (claim ``allowed-capabilities``, a JSON *string*
  ``{"tools": {server: [tool, ...]}}``) or the older ``x-authorized-tools`` (claim
  ``allowed-tools``, a JSON string ``{server: [tool, ...]}``); the current header wins when both
  are present; of several values the **last** one counts (the one the auth layer appended);
* verified with the configured PEM public key, algorithm **ES256 only**, ``exp``/``nbf`` when
  present; ``iss`` and ``aud`` are not checked;
* present but invalid (bad signature, other algorithm, expired, claim missing or not a JSON
  string) → **empty list**; absent → the full list, or an empty list with
  ``enforce_capability_filtering``; a claim without a ``tools`` key → the same as absent;
* only tools of the named servers that the server really lists are kept; an empty result is
  ``[]``, never ``null``.

A ``tools/call`` the router could not place (unknown tool) is answered here with the upstream's
``"MCP error -32602: Tool not found"`` tool error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from tests.testbed.mcp_gateway.config import (
    CURRENT_HEADER,
    LEGACY_HEADER,
    Catalogue,
    GatewayConfig,
)
from tests.testbed.mcp_gateway.router import sse_messages

log = logging.getLogger("mcp_gateway.broker")

CURRENT_CLAIM = "allowed-capabilities"
LEGACY_CLAIM = "allowed-tools"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "cookie",
        "accept-encoding",  # the broker reads tools/list answers: ask for identity encoding
    }
)
RESPONSE_HEADERS = ("content-type", "mcp-session-id", "www-authenticate", "cache-control")


class HeaderInvalid(Exception):
    """The signed tool-list header is present but cannot be trusted."""


def allowed_from_header(
    headers: Mapping[str, Sequence[str]], public_key_pem: str | None
) -> dict[str, list[str]] | None:
    """``{server: [tool, ...]}`` from the signed header; None when no header is present.

    Raises :class:`HeaderInvalid` for a present but untrustworthy header.
    """
    if headers.get(CURRENT_HEADER):
        values, claim = headers[CURRENT_HEADER], CURRENT_CLAIM
    elif headers.get(LEGACY_HEADER):
        values, claim = headers[LEGACY_HEADER], LEGACY_CLAIM
    else:
        return None
    token = values[-1]
    if not token:
        raise HeaderInvalid("empty header value")
    if not public_key_pem:
        raise HeaderInvalid("no public key configured to validate the header")
    try:
        claims = jwt.decode(
            token,
            public_key_pem,
            algorithms=["ES256"],
            options={"verify_aud": False, "verify_iss": False, "require": []},
        )
    except jwt.PyJWTError as exc:
        raise HeaderInvalid(f"JWT validation failed: {type(exc).__name__}: {exc}") from None
    raw = claims.get(claim)
    if raw is None:
        raise HeaderInvalid(f"missing {claim} claim")
    if not isinstance(raw, str):
        raise HeaderInvalid(f"{claim} claim is not a string")
    try:
        decoded = json.loads(raw)
    except ValueError:
        raise HeaderInvalid(f"{claim} is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise HeaderInvalid(f"{claim} must hold a JSON object")
    if claim == CURRENT_CLAIM:
        if "tools" not in decoded:
            return None  # upstream: "no tools key in capabilities" behaves like an absent header
        mapping = decoded["tools"]
    else:
        mapping = decoded
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
        for k, v in mapping.items()
    ):
        raise HeaderInvalid(f"{claim} must map server names to lists of tool names")
    return {k: list(v) for k, v in mapping.items()}


def filter_tools(
    tools: list[Any] | None,
    server: str,
    headers: Mapping[str, Sequence[str]],
    public_key_pem: str | None,
    *,
    enforce: bool,
) -> list[Any]:
    """The tools of ``server``'s ``tools/list`` result the caller may see (never None)."""
    if not tools:
        return []
    try:
        allowed = allowed_from_header(headers, public_key_pem)
    except HeaderInvalid as exc:
        log.warning("signed tool-list header refused, listing no tools: %s", exc)
        return []
    if allowed is None:
        return [] if enforce else list(tools)
    names = set(allowed.get(server, []))
    return [t for t in tools if isinstance(t, dict) and t.get("name") in names]


def header_lists(headers: Any) -> dict[str, list[str]]:
    """aiohttp's multi-dict → lower-case name → every value, in order."""
    out: dict[str, list[str]] = {}
    for key, value in headers.items():
        out.setdefault(key.lower(), []).append(value)
    return out


def filtered_message(message: Any, broker: Broker, headers: Mapping[str, Sequence[str]]) -> Any:
    """A tools/list JSON-RPC answer with its ``result.tools`` filtered (others unchanged)."""
    if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
        return message
    result = message["result"]
    if "tools" not in result:
        return message
    tools = result["tools"] if isinstance(result["tools"], list) else []
    server = broker.config.primary.name
    broker.catalogue.learn(server, tools)
    kept = filter_tools(
        tools,
        server,
        headers,
        broker.config.trusted_header_public_key,
        enforce=broker.config.enforce_capability_filtering,
    )
    return {**message, "result": {**result, "tools": kept}}


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class Broker:
    config: GatewayConfig
    catalogue: Catalogue
    session: aiohttp.ClientSession | None = None

    def upstream_headers(self, request: web.Request) -> dict[str, str]:
        out = {}
        for key, value in request.headers.items():
            low = key.lower()
            if low in HOP_BY_HOP or low.startswith(("x-mcp-", "x-envoy-")) or low == LEGACY_HEADER:
                continue
            out[key] = value
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        message = _json_body(body)
        method = message.get("method") if isinstance(message, dict) else None
        if request.headers.get("x-mcp-method") == "tools/call" or method == "tools/call":
            return self.tool_not_found(message)
        url = self.config.primary.url
        if request.path != "/mcp":  # e.g. /.well-known/oauth-protected-resource
            url = str(URL(url).with_path(request.path))
        try:
            upstream = await self.session.request(
                request.method,
                url,
                data=body if body else None,
                headers=self.upstream_headers(request),
                params=request.query,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("MCP server %s unreachable: %s", self.config.primary.name, exc)
            return web.json_response(
                {
                    "jsonrpc": "2.0",
                    "id": message.get("id") if isinstance(message, dict) else None,
                    "error": {
                        "code": -32603,
                        "message": f"MCP server {self.config.primary.name} is unreachable; "
                        "retry shortly",
                    },
                },
                status=502,
            )
        async with upstream:
            if method == "tools/list":
                return await self.filtered(request, upstream)
            return await self.stream(request, upstream)

    def tool_not_found(self, message: Any) -> web.Response:
        return web.json_response(
            {
                "jsonrpc": "2.0",
                "id": message.get("id") if isinstance(message, dict) else None,
                "result": {
                    "content": [{"type": "text", "text": "MCP error -32602: Tool not found"}],
                    "isError": True,
                },
            }
        )

    def _copy_headers(self, upstream: aiohttp.ClientResponse) -> dict[str, str]:
        return {h: upstream.headers[h] for h in RESPONSE_HEADERS if h in upstream.headers}

    async def filtered(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.Response:
        text = await upstream.text()
        headers = self._copy_headers(upstream)
        if upstream.status != 200:
            return web.Response(status=upstream.status, text=text, headers=headers)
        caller = header_lists(request.headers)
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            events = [filtered_message(m, self, caller) for m in sse_messages(text)]
            out = "".join(f"event: message\ndata: {json.dumps(e)}\n\n" for e in events)
            return web.Response(status=200, text=out, headers=headers)
        try:
            answer = json.loads(text)
        except ValueError:
            return web.json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "bad answer"}},
                status=502,
            )
        headers.pop("content-type", None)
        return web.json_response(filtered_message(answer, self, caller), headers=headers)

    async def stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=self._copy_headers(upstream))
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_broker_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/mcp", broker.handle)
    app.router.add_route("*", "/.well-known/oauth-protected-resource{tail:.*}", broker.handle)
    return app
