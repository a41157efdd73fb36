"""Client authentication material sent to the token service (no network involved)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.token_exchange.sts_client import CLIENT_ASSERTION_TYPE, STSClient
from gateway_plugins.token_exchange.sts_config import ClientAuth, STSConfig
from tests.gateway_plugins.common.issuer import new_rsa

TOKEN_URL = "https://kc.example/realms/mcp/protocol/openid-connect/token"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session()
    yield client
    await client.close()


async def test_private_key_jwt_assertion(session: aiohttp.ClientSession) -> None:
    key = new_rsa()
    cfg = STSConfig(
        token_url=TOKEN_URL,
        client_id="mcp-gateway",
        client_auth=ClientAuth.PRIVATE_KEY_JWT,
        private_key_file=Path("/unused/in/this/test.pem"),
        private_key_kid="gw-1",
    )
    client = STSClient("mcp", cfg, session, private_key=key)
    form: list[tuple[str, str]] = []
    headers = client._client_auth(form)
    fields = dict(form)
    assert headers == {}
    assert fields["client_id"] == "mcp-gateway"
    assert fields["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assertion = fields["client_assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == "gw-1"
    claims = jwt.decode(
        assertion, key.public_key(), algorithms=["RS256"], audience="https://kc.example/realms/mcp"
    )
    assert claims["iss"] == claims["sub"] == "mcp-gateway"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["jti"]
    assert "client_secret" not in fields


async def test_client_secret_basic_is_form_encoded(session: aiohttp.ClientSession) -> None:
    cfg = STSConfig(token_url=TOKEN_URL, client_id="my client", client_secret_env="UNUSED")
    client = STSClient("mcp", cfg, session, client_secret="p@ss:word")
    form: list[tuple[str, str]] = []
    headers = client._client_auth(form)
    raw = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert raw == "my+client:p%40ss%3Aword"  # RFC 6749 2.3.1: form-encode, then Basic
    assert form == []


async def test_secret_or_key_required(session: aiohttp.ClientSession) -> None:
    cfg = STSConfig(token_url=TOKEN_URL, client_id="c", client_secret_env="UNUSED")
    with pytest.raises(ValueError, match="needs a client secret"):
        STSClient("mcp", cfg, session, client_secret=None)
    with pytest.raises(ValueError, match="private_key_jwt needs private_key_file"):
        STSConfig(token_url=TOKEN_URL, client_id="c", client_auth=ClientAuth.PRIVATE_KEY_JWT)
