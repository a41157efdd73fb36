"""Which MCP protocol eras ``/mcp`` serves: handshake (``initialize``, 2024-11-05 .. 2025-11-25)
always, the 2026-07-28 protocol (``server/discover``, per-request metadata) unless switched off.

Why switch it off: the MCP Gateway v0.9.0 broker files every upstream under the one protocol
it negotiated with it, and serves that upstream's tools only to clients of the same era. A server
that speaks both is reached through ``server/discover`` first, so its tools vanish for every
handshake-era client (most clients today). With ``modern_protocol: false`` the backend answers a
2026-07-28 request (its ``MCP-Protocol-Version`` header names a version that is not a handshake
one) with the protocol's own refusal: JSON-RPC error ``-32022`` (unsupported protocol version)
naming the versions it does serve. Clients, the broker's included, then fall back to
``initialize``.
"""

from __future__ import annotations

import orjson
from mcp_types import UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VERSION_HEADER = b"mcp-protocol-version"
_MAX_ID_BODY = 64 * 1024  # read at most this much of a refused body to echo its JSON-RPC id


def requested_version(scope: Scope) -> str | None:
    """The ``MCP-Protocol-Version`` header of the request, if any."""
    for key, value in scope.get("headers", []):
        if key == VERSION_HEADER:
            return bytes(value).decode("latin-1").strip()
    return None


class HandshakeOnly:
    """ASGI wrapper of ``/mcp`` that refuses 2026-era requests (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = requested_version(scope) if scope["type"] == "http" else None
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            await self.app(scope, receive, send)
            return
        body = await _read_prefix(receive) if scope.get("method") == "POST" else b""
        payload = {
            "jsonrpc": "2.0",
            "id": _request_id(body),
            "error": {
                "code": UNSUPPORTED_PROTOCOL_VERSION,
                "message": f"protocol version {version[:40]!r} is not served here: use the "
                "initialize handshake with one of the supported versions",
                "data": {"supported": list(HANDSHAKE_PROTOCOL_VERSIONS), "requested": version[:40]},
            },
        }
        raw = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})


async def _read_prefix(receive: Receive) -> bytes:
    """Up to ``_MAX_ID_BODY`` bytes of the request body (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_ID_BODY:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunk = bytes(message.get("body", b""))
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _request_id(body: bytes) -> str | int | None:
    """The JSON-RPC id of a whole, single request body; else None (as JSON-RPC prescribes)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        value = doc.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
    return None
