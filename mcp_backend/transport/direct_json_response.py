"""Stateless JSON-mode requests answered in the request's own task.

In stateless mode the SDK's Streamable HTTP manager builds a whole transport for every POST: a
server task in its task group, memory streams, a JSON-RPC dispatcher loop, then tears it all down
again. For a single request answered with a single JSON body (a gateway's ``tools/call``) none of
that carries anything. ``DirectJsonResponder`` serves such a request the way the SDK serves a 2026
protocol request: the SDK's own ``serve_one`` (the same handler chain, middleware, parameter
validation and result serialization) awaited directly, and one JSON body written back. The
answer is byte for byte the transport's
(``tests/mcp_backend/transport/test_direct_json_response.py``).

Anything else goes to the SDK unchanged, with the body replayed: other methods (``initialize``,
notifications, batches), other protocol versions, a body that does not parse, a missing
``Accept``/``Content-Type``, an oversized body, GET and DELETE. Those answers (errors included)
are therefore always the SDK's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from mcp.server import Server
from mcp.server.connection import Connection
from mcp.server.runner import serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    ErrorData,
    RequestId,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_backend.metrics import Metrics

log = logging.getLogger("mcp_backend.single_exchange")

# Requests answered here: one request in, one result out, nothing sent to the client meanwhile.
METHODS = frozenset({"tools/call", "tools/list", "prompts/list", "prompts/get", "ping"})
_JSON = b"application/json"


@dataclass
class _DispatchContext:
    """The SDK's ``DispatchContext`` for one request whose answer is a JSON body: as on the
    SDK's stateless JSON path, there is no back-channel and notifications have no wire."""

    transport: TransportContext
    request_id: RequestId
    message_metadata: ServerMessageMetadata
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    can_send_request: bool = False

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        return None

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        return None


def _request_of(body: bytes) -> dict[str, Any] | None:
    """The decoded JSON-RPC request when it is one this module answers, else None."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None
    rid, params = message.get("id"), message.get("params")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    if message.get("method") not in METHODS or not isinstance(params, dict | None):
        return None
    if set(message) - {"jsonrpc", "id", "method", "params"}:
        return None
    return message


class DirectJsonResponder:
    """ASGI front of the SDK's ``/mcp`` app for a stateless, JSON-response manager."""

    def __init__(
        self,
        sdk_app: ASGIApp,
        server: Server[Any],
        security: TransportSecuritySettings,
        metrics: Metrics,
        *,
        max_body_size: int,
    ) -> None:
        self.sdk_app = sdk_app
        self.answered = metrics.mcp_requests.labels("single_exchange")
        self.delegated = metrics.mcp_requests.labels("transport")
        self.server = server
        # The transport's own request checks (Content-Type, then Host and Origin): the backend's
        # HostOriginGuard refused foreign Hosts and Origins already, with the same lists.
        self.security = TransportSecurityMiddleware(security)
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = self._eligible(scope)
        request = Request(scope, receive)
        if version is None or not check_accept_headers(request)[0]:
            await self._delegate(scope, receive, send)
            return
        read = await self._body(receive)
        if read is None:
            return  # the client left: nobody to answer
        chunks, complete = read
        body = b"".join(chunks)
        message = _request_of(body) if complete and len(body) <= self.max_body_size else None
        if message is None:
            await self._delegate(scope, _replay(chunks, complete, receive), send)
            return
        refusal = await self.security.validate_request(request, is_post=True)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self.answered.inc()
        await self._answer(request, message, version, send)

    async def _delegate(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.delegated.inc()
        await self.sdk_app(scope, receive, send)

    def _eligible(self, scope: Scope) -> str | None:
        """The protocol version to serve ``scope`` at, or None to leave it to the SDK."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        version: str | None = None
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"mcp-protocol-version":
                version = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
            elif name == b"mcp-session-id":
                return None
        # The transport's own test: one of the comma-separated types before any ';' is JSON.
        if _JSON not in (part.strip() for part in content_type.split(b";")[0].split(b",")):
            return None
        if version is None:
            return DEFAULT_NEGOTIATED_VERSION
        return version if version in HANDSHAKE_PROTOCOL_VERSIONS else None

    async def _body(self, receive: Receive) -> tuple[list[bytes], bool] | None:
        """The body's chunks, and whether that is all of it: reading stops once it is larger
        than the SDK accepts (the SDK refuses it from the replayed part). None when the client
        left."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            complete = not message.get("more_body", False)
            if complete or size > self.max_body_size:
                return chunks, complete

    async def _answer(
        self, request: Request, message: dict[str, Any], version: str, send: Send
    ) -> None:
        rid = message["id"]
        dctx = _DispatchContext(
            transport=TransportContext(
                kind="streamable-http", can_send_request=False, headers=request.headers
            ),
            request_id=rid,
            message_metadata=ServerMessageMetadata(request_context=request),
        )
        connection = Connection.from_envelope(version, None, None)
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        try:
            answer["result"] = await serve_one(
                self.server,
                dctx,
                message["method"],
                message.get("params"),
                connection=connection,
                lifespan_state={},
            )
        except Exception as exc:
            error = handler_exception_to_error_data(exc)
            if error is None:  # the tool handlers catch their own failures: a bug if it happens
                log.exception("%s failed unexpectedly", message["method"])
                error = ErrorData(code=INTERNAL_ERROR, message="Internal server error")
            answer["error"] = error.model_dump(by_alias=True, exclude_unset=True)
        body = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(chunks: list[bytes], complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands out the body chunks already read, then the client's own
    messages (the rest of the body when it was not read to the end, then the disconnect)."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": bool(pending) or not complete,
            }
        return await receive()

    return replay
