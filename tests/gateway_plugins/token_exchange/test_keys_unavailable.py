"""When the issuer's keys cannot be loaded, unauthenticated callers get a generic 503.

The real service runs against a real local issuer that answers 503 to discovery and JWKS; the
token endpoint is a closed port (never reached: validation fails first). The issuer's URL and the
error must reach the log only, never the ``/check`` reason or the ``/token`` error description.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import KEYS_UNAVAILABLE, IssuerConfig
from gateway_plugins.token_exchange.config import (
    ExtAuthzConfig,
    FacadeClient,
    FacadeConfig,
    Settings,
    ValidationConfig,
)
from gateway_plugins.token_exchange.sts_config import StepConfig, STSConfig, TargetConfig
from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADER,
    CALLER_HEADERS,
    CALLER_SECRET,
    running_service,
)
from tests.testbed.ports import free_port

FACADE_SECRET = "facade-secret-test-only"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer("mcp").start()
    yield server
    await server.close()


def _settings(issuer: LocalIssuer, secrets: Path) -> Settings:
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("sts", "sts-secret-test-only"),
        ("facade", FACADE_SECRET),
        ("caller", CALLER_SECRET),
    ):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    closed = f"http://127.0.0.1:{free_port()}/realms/mcp/protocol/openid-connect/token"
    sts = STSConfig(token_url=closed, client_id="gw", client_secret_file=secrets / "sts")
    return Settings(
        validation=ValidationConfig(
            issuers=[IssuerConfig(issuer=issuer.issuer, audiences=["backend"])]
        ),
        sts={"mcp": sts},
        targets=[TargetConfig(audience="backend", steps=[StepConfig(sts="mcp")])],
        facade=FacadeConfig(
            clients=[FacadeClient(client_id="mcp-backend", client_secret_file=secrets / "facade")]
        ),
        ext_authz=ExtAuthzConfig(targets=["backend"]),
        caller_auth=CallerAuthConfig(header=CALLER_HEADER, secret_file=secrets / "caller"),
    )


def _assert_internal_detail_hidden(text: str, issuer: LocalIssuer) -> None:
    assert issuer.issuer not in text
    assert "127.0.0.1" not in text
    assert "HTTP 503" not in text


async def test_check_and_facade_answer_a_generic_503_and_log_the_detail(
    issuer: LocalIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issuer.failing = True
    token = issuer.token(aud="backend")
    with caplog.at_level(logging.WARNING):
        async with running_service(_settings(issuer, tmp_path)) as service:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{service.url}/check/mcp",
                    headers={
                        "authorization": f"Bearer {token}",
                        "x-mcp-servername": "backend",
                        **CALLER_HEADERS,
                    },
                ) as resp:
                    status, body = resp.status, await resp.json()
                assert status == 503, body
                assert body == {
                    "allow": False,
                    "error": "token_service_unavailable",
                    "reason": KEYS_UNAVAILABLE,
                }
                async with http.post(
                    f"{service.url}/token",
                    auth=aiohttp.BasicAuth("mcp-backend", FACADE_SECRET),
                    data={
                        "grant_type": GRANT,
                        "subject_token": token,
                        "subject_token_type": ACCESS,
                        "audience": "backend",
                    },
                ) as resp:
                    status, answer = resp.status, await resp.json()
                assert status == 503, answer
                assert answer == {
                    "error": "temporarily_unavailable",
                    "error_description": KEYS_UNAVAILABLE,
                }
            assert service.sts_calls() == 0
    _assert_internal_detail_hidden(json.dumps(body), issuer)
    _assert_internal_detail_hidden(json.dumps(answer), issuer)
    # The operator still learns which URL failed and how.
    logged = [r.getMessage() for r in caplog.records if "signing keys" in r.getMessage()]
    assert logged
    assert f"{issuer.issuer}/.well-known/openid-configuration" in logged[0]
    assert "HTTP 503" in logged[0]
