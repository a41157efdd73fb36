"""The backend's RFC 8693 client never follows a redirect of the exchange endpoint.

Two real aiohttp servers on 127.0.0.1: the configured exchange URL answers 307/308 to the other
one, which records every request. A followed redirect would re-send the caller's token (the
``subject_token``) and the HTTP Basic client secret there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mcp_backend.config import TokenExchangeConfig
from mcp_backend.errors import Unreachable
from mcp_backend.token_exchange import TokenExchanger

SUBJECT = "caller-token-that-must-stay-home"
SECRET_ENV = "KMG_TEST_EXCHANGE_CLIENT_SECRET"


@dataclass
class Servers:
    url: str = ""
    elsewhere: str = ""
    status: int = 307
    received: list[tuple[str, str]] = field(default_factory=list)  # (authorization, body)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    state = Servers()

    async def collect(request: web.Request) -> web.Response:
        state.received.append((request.headers.get("Authorization", ""), await request.text()))
        return web.json_response({"access_token": "stolen", "expires_in": 60})

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=state.status, headers={"Location": state.elsewhere})

    other_app = web.Application()
    other_app.router.add_route("*", "/collect", collect)
    other = TestServer(other_app, host="127.0.0.1")
    await other.start_server()
    app = web.Application()
    app.router.add_post("/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/token"))
    state.elsewhere = str(other.make_url("/collect"))
    yield state
    await server.close()
    await other.close()


@pytest.mark.parametrize("status", [307, 308])
async def test_redirect_is_an_error_and_the_token_is_not_resent(
    servers: Servers, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers.status = status
    monkeypatch.setenv(SECRET_ENV, "backend-client-secret")
    cfg = TokenExchangeConfig(
        url=servers.url, audience="cluster-b", client_id="mcp-backend", client_secret_env=SECRET_ENV
    )
    exchanger = TokenExchanger()
    try:
        with pytest.raises(Unreachable) as info:
            await exchanger.exchange(cfg, SUBJECT, "b")
    finally:
        await exchanger.close()
    message = info.value.message
    assert f"answered a redirect (HTTP {status})" in message
    assert "set token_exchange.url to the final token endpoint" in message
    assert SUBJECT not in message
    assert servers.received == []
