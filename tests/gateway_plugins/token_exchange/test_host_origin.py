"""DNS rebinding and cross-site protection of the token exchange service, against the testbed's
real Keycloak: ``/token`` (the RFC 8693 facade) refuses a foreign Host or Origin before any
exchange; the ext_authz check, which Envoy calls with the original request's Host, does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE

APP_ORIGIN = "https://app.example.com"
EVIL = "evil.example"


@pytest.fixture(scope="module")
async def service(
    keycloak: kc.Keycloak, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    settings = service_settings(
        keycloak, tmp_path_factory.mktemp("te-host-origin"), allowed_origins=[APP_ORIGIN]
    )
    async with running_service(settings) as running:
        yield running


async def _token(service: RunningService, user_token: str, **headers: str) -> tuple[int, Any]:
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": user_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": BACKEND_AUDIENCE,
    }
    auth = aiohttp.BasicAuth(FACADE_CLIENT_ID, FACADE_CLIENT_SECRET)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{service.url}/token", data=form, auth=auth, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_token_facade_refuses_foreign_host_and_origin_before_exchanging(
    keycloak: kc.Keycloak, service: RunningService
) -> None:
    user_token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    before = service.sts_calls()
    # A page of another site posting the form (a CORS "simple" request: no preflight).
    status, body = await _token(service, user_token, Origin=f"http://{EVIL}")
    assert status == 403, body.get("error")  # never print a body that may hold a token
    assert body["allow"] is False
    assert body["error"] == "origin_not_allowed"
    assert "allowed_origins" in body["reason"]
    assert "access_token" not in body
    # The same page after DNS rebinding: its own name in Host.
    port = service.url.rsplit(":", 1)[1]
    status, body = await _token(
        service, user_token, Host=f"{EVIL}:{port}", Origin=f"http://{EVIL}:{port}"
    )
    assert (status, body.get("error")) == (421, "host_not_allowed")
    assert service.sts_calls() == before  # Keycloak never asked
    # Allowed: no Origin (the backend, Authorino), and the configured browser origin.
    status, body = await _token(service, user_token)
    assert status == 200, body.get("error")
    assert body["access_token"]
    assert service.sts_calls() == before + 1
    status, again = await _token(service, user_token, Origin=APP_ORIGIN)
    assert status == 200, again.get("error")
    assert again["access_token"] == body["access_token"]  # from the cache


async def test_ext_authz_check_keeps_the_original_host(
    keycloak: kc.Keycloak, service: RunningService
) -> None:
    """Envoy's check request carries the client's Host (the gateway's public name) and may
    carry its Origin: the gateway and the backend judge those, not the check."""
    user_token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    headers = {
        "authorization": f"Bearer {user_token}",
        "x-mcp-servername": BACKEND_AUDIENCE,
        "x-mcp-method": "tools/call",
        "host": "mcp.gateway.example",
        "origin": f"http://{EVIL}",
        **CALLER_HEADERS,  # the gateway's credential (caller_auth)
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{service.url}/check/mcp", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["allow"] is True
        assert resp.headers["authorization"].startswith("Bearer ")
