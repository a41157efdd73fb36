"""Keycloak outages: a slow Keycloak times out with 503 and recovers; during an outage cached
tokens keep working.

Order matters only for the last test, which stops and restarts Keycloak.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from tests.gateway_plugins.token_exchange.checks import (
    fetch_user_token,
    issued_token,
    post_check,
)
from tests.gateway_plugins.token_exchange.running import (
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.keycloak import decode_jwt


def _freeze(keycloak: kc.Keycloak, sig: signal.Signals) -> None:
    """SIGSTOP/SIGCONT Keycloak's process group: a real hung server (accepts, never answers)."""
    proc = keycloak._proc.proc if keycloak._proc is not None else None
    assert proc is not None, "Keycloak is not running"
    os.killpg(os.getpgid(proc.pid), sig)


async def test_slow_keycloak_times_out_with_503_and_recovers(
    keycloak: kc.Keycloak, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = service_settings(keycloak, tmp_path)
    settings.sts = {
        name: sts.model_copy(update={"timeout_s": 1.0}) for name, sts in settings.sts.items()
    }
    users = [await fetch_user_token(keycloak, u, u) for u in ("mcp", "viewer")]
    async with running_service(settings) as service:
        status, _, _ = await post_check(http, service, users[0], BACKEND_AUDIENCE)
        assert status == 200
        _freeze(keycloak, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, _, body = await post_check(http, service, users[1], BACKEND_AUDIENCE)
            waited = time.monotonic() - started
            assert status == 503, body
            assert "did not answer within 1s" in body["reason"]
            assert waited < 5
            status, _, _ = await post_check(http, service, users[0], BACKEND_AUDIENCE)
            assert status == 200  # cached
        finally:
            _freeze(keycloak, signal.SIGCONT)
        await asyncio.sleep(1.1)  # let the breaker's cooldown pass if it opened
        status, headers, body = await post_check(http, service, users[1], BACKEND_AUDIENCE)
        assert status == 200, body
        assert decode_jwt(issued_token(headers))["preferred_username"] == "viewer"


async def test_keycloak_outage_503_cached_tokens_keep_working_then_recovery(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    cached_user = await fetch_user_token(keycloak, "mcp", "mcp")
    uncached_user = await fetch_user_token(keycloak, "viewer", "viewer")
    status, headers, _ = await post_check(http, service, cached_user, BACKEND_AUDIENCE)
    assert status == 200
    cached_token = issued_token(headers)

    await asyncio.to_thread(keycloak.stop)
    try:
        status, _, body = await post_check(http, service, uncached_user, BACKEND_AUDIENCE)
        assert status == 503
        assert body["error"] == "token_service_unavailable"
        assert "unreachable" in body["reason"] or "times in a row" in body["reason"]
        status, headers, _ = await post_check(http, service, cached_user, BACKEND_AUDIENCE)
        assert status == 200
        assert issued_token(headers) == cached_token
        async with http.get(f"{service.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["jwks"] == "ok"  # keys stay cached
    finally:
        await asyncio.to_thread(keycloak.start)

    deadline = time.monotonic() + 30
    while True:
        status, headers, body = await post_check(http, service, uncached_user, BACKEND_AUDIENCE)
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status == 200, body
    assert decode_jwt(issued_token(headers))["preferred_username"] == "viewer"
