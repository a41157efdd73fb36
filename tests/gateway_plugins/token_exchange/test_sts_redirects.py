"""A token endpoint answering a redirect never gets the form re-sent elsewhere.

Two real aiohttp servers on 127.0.0.1: the configured token endpoint answers 307/308 to the
other one, which records every request it receives. A followed redirect would re-send the form
(subject token, client secret or client assertion) there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.token_exchange.config import BreakerConfig, ClientAuth, STSConfig
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.sts_client import STSClient, STSUnavailable
from tests.gateway_plugins.common.issuer import new_rsa

SUBJECT = "subject-token-that-must-stay-home"
SECRET = "client-secret-that-must-stay-home"


@dataclass
class Redirecting:
    """``token_url`` answers ``status`` with Location = ``elsewhere``; ``received`` records what
    reached ``elsewhere``."""

    token_url: str
    elsewhere: str
    received: list[str] = field(default_factory=list)
    status: int = 307


@pytest.fixture
async def redirecting() -> AsyncIterator[Redirecting]:
    state = Redirecting("", "")

    async def elsewhere(request: web.Request) -> web.Response:
        state.received.append(await request.text())
        return web.json_response({"access_token": "stolen", "expires_in": 60})

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=state.status, headers={"Location": state.elsewhere})

    other_app = web.Application()
    other_app.router.add_route("*", "/collect", elsewhere)
    other = TestServer(other_app, host="127.0.0.1")
    await other.start_server()
    app = web.Application()
    app.router.add_post("/realms/mcp/protocol/openid-connect/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.token_url = str(server.make_url("/realms/mcp/protocol/openid-connect/token"))
    state.elsewhere = str(other.make_url("/collect?code=abc"))
    yield state
    await server.close()
    await other.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(timeout_s=2.0)
    yield client
    await client.close()


def _client(
    redirecting: Redirecting, session: aiohttp.ClientSession, auth: ClientAuth
) -> tuple[STSClient, ExchangeMetrics]:
    metrics = ExchangeMetrics(CollectorRegistry())
    if auth is ClientAuth.PRIVATE_KEY_JWT:
        cfg = STSConfig(
            token_url=redirecting.token_url,
            client_id="mcp-gateway",
            client_auth=auth,
            private_key_file=Path("/unused/in/this/test.pem"),
        )
        client = STSClient("mcp", cfg, session, private_key=new_rsa(), metrics=metrics)
    else:
        cfg = STSConfig(
            token_url=redirecting.token_url,
            client_id="mcp-gateway",
            client_auth=auth,
            client_secret_env="UNUSED",
        )
        client = STSClient(
            "mcp",
            cfg,
            session,
            client_secret=SECRET,
            breaker=BreakerConfig(failures=5),
            metrics=metrics,
        )
    return client, metrics


@pytest.mark.parametrize("status", [307, 308, 302])
@pytest.mark.parametrize("auth", [ClientAuth.CLIENT_SECRET_POST, ClientAuth.PRIVATE_KEY_JWT])
async def test_token_exchange_redirect_is_an_error_and_nothing_is_resent(
    redirecting: Redirecting, session: aiohttp.ClientSession, status: int, auth: ClientAuth
) -> None:
    redirecting.status = status
    client, metrics = _client(redirecting, session, auth)
    with pytest.raises(STSUnavailable) as info:
        await client.token_exchange(SUBJECT, ["backend"], None)
    message = str(info.value)
    assert f"answered HTTP {status} redirecting to http://127.0.0.1:" in message
    assert "set token_url to the final token endpoint" in message
    assert "/collect" not in message  # the origin only, never the path or query
    assert "code=abc" not in message
    assert SUBJECT not in message
    assert SECRET not in message
    assert info.value.misconfigured
    assert redirecting.received == []  # the form never left for the other address
    assert metrics.sts_call_count() == 1


async def test_jwt_bearer_redirect_is_an_error(
    redirecting: Redirecting, session: aiohttp.ClientSession
) -> None:
    client, _ = _client(redirecting, session, ClientAuth.CLIENT_SECRET_BASIC)
    with pytest.raises(STSUnavailable, match="answered HTTP 307 redirecting"):
        await client.jwt_bearer("an-assertion-that-must-stay-home", None)
    assert redirecting.received == []
