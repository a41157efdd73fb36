"""The backend's RFC 8693 client never follows a redirect of the exchange endpoint.

The configured exchange URL answers 307/308 to another real server that records every request
(``tests/testbed/redirecting_endpoint.py``). A followed redirect would re-send the caller's token
(the ``subject_token``) and the HTTP Basic client secret there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mcp_backend.cluster_config import TokenExchangeConfig
from mcp_backend.errors import Unreachable
from mcp_backend.kube.token_exchange import TokenExchanger
from tests.testbed.redirecting_endpoint import RedirectingEndpoint, redirecting_endpoint

SUBJECT = "caller-token-that-must-stay-home"
SECRET_ENV = "KMG_TEST_EXCHANGE_CLIENT_SECRET"


@pytest.fixture
async def servers() -> AsyncIterator[RedirectingEndpoint]:
    async with redirecting_endpoint("/token") as endpoint:
        yield endpoint


@pytest.mark.parametrize("status", [307, 308])
async def test_redirect_is_an_error_and_the_token_is_not_resent(
    servers: RedirectingEndpoint, status: int, monkeypatch: pytest.MonkeyPatch
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
