"""A token endpoint answering a redirect never gets the form re-sent elsewhere.

The configured token endpoint answers 307/308/302 to another real server that records every
request it receives (``tests/testbed/redirecting_endpoint.py``). A followed redirect would
re-send the form (subject token, client secret or client assertion) there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.token_exchange.config import BreakerConfig
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.sts_client import STSClient, STSUnavailable
from gateway_plugins.token_exchange.sts_config import ClientAuth, STSConfig
from tests.gateway_plugins.common.issuer import new_rsa
from tests.testbed.redirecting_endpoint import RedirectingEndpoint, redirecting_endpoint

SUBJECT = "subject-token-that-must-stay-home"
SECRET = "client-secret-that-must-stay-home"


@pytest.fixture
async def redirecting() -> AsyncIterator[RedirectingEndpoint]:
    async with redirecting_endpoint(
        "/realms/mcp/protocol/openid-connect/token", elsewhere="/collect?code=abc"
    ) as endpoint:
        yield endpoint


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(timeout_s=2.0)
    yield client
    await client.close()


def _client(
    redirecting: RedirectingEndpoint, session: aiohttp.ClientSession, auth: ClientAuth
) -> tuple[STSClient, ExchangeMetrics]:
    metrics = ExchangeMetrics(CollectorRegistry())
    if auth is ClientAuth.PRIVATE_KEY_JWT:
        cfg = STSConfig(
            token_url=redirecting.url,
            client_id="mcp-gateway",
            client_auth=auth,
            private_key_file=Path("/unused/in/this/test.pem"),
        )
        client = STSClient("mcp", cfg, session, private_key=new_rsa(), metrics=metrics)
    else:
        cfg = STSConfig(
            token_url=redirecting.url,
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
    redirecting: RedirectingEndpoint, session: aiohttp.ClientSession, status: int, auth: ClientAuth
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
    redirecting: RedirectingEndpoint, session: aiohttp.ClientSession
) -> None:
    client, _ = _client(redirecting, session, ClientAuth.CLIENT_SECRET_BASIC)
    with pytest.raises(STSUnavailable, match="answered HTTP 307 redirecting"):
        await client.jwt_bearer("an-assertion-that-must-stay-home", None)
    assert redirecting.received == []
