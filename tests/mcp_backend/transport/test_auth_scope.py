"""The auth middleware parses the bearer token once and keeps it in the request's scope for
the tool handlers (issue 15 item 3): they read it from there, never from the headers again."""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from mcp_backend.metrics import Metrics
from mcp_backend.transport.auth import SCOPE_TOKEN, RequireBearer, scope_token

TOKEN = "opaque-test-token-0123456789"  # a test value, not a secret


class Recorder:
    """The inner ASGI app: remembers the scope it was called with and answers 204."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(app: RequireBearer, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    await app(scope, receive, send)
    return sent


async def test_the_parsed_header_token_reaches_the_handlers_through_the_scope() -> None:
    inner = Recorder()
    app = RequireBearer(inner, resource_url=None, metrics=Metrics())
    sent = await _call(app, [(b"authorization", f"Bearer {TOKEN}".encode())])
    assert sent[0]["status"] == 204
    assert scope_token(inner.scopes[0]) == TOKEN
    await _call(app, [(b"kubernetes-authorization", TOKEN.encode())])
    assert scope_token(inner.scopes[1]) == TOKEN


async def test_without_a_header_token_the_scope_holds_none() -> None:
    inner = Recorder()
    optional = RequireBearer(inner, resource_url=None, metrics=Metrics(), optional=True)
    await _call(optional, [])
    assert SCOPE_TOKEN in inner.scopes[0]
    assert scope_token(inner.scopes[0]) is None
    required = RequireBearer(Recorder(), resource_url=None, metrics=Metrics())
    sent = await _call(required, [])
    assert sent[0]["status"] == 401


def test_a_scope_that_did_not_pass_the_middleware_has_no_token() -> None:
    assert scope_token({"type": "http", "headers": [(b"authorization", b"Bearer x")]}) is None
    assert scope_token({SCOPE_TOKEN: 42}) is None
