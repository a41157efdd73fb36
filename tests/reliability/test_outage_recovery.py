"""Outages of the identity and policy components, with the real ones stopped and restarted:
Keycloak returns after an outage and the token service exchanges again within 5 s; OPA stopped:
every decision path of the policy service denies with a reason, then recovers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.policy.running import SERVER, policy_settings, running_policy
from tests.gateway_plugins.token_exchange.running import (
    RunningService,
)
from tests.reliability.service_calls import token_exchange_check
from tests.testbed import keycloak as kc
from tests.testbed.opa_server import OpaServer

pytestmark = pytest.mark.timeout(900)


# -- Keycloak comes back ----------------------------------------------------------------------
async def test_token_service_recovers_within_5s_of_keycloak_return(
    http: aiohttp.ClientSession, token_service: RunningService, keycloak: kc.Keycloak
) -> None:
    uncached = await asyncio.to_thread(keycloak.user_token, "viewer", "viewer")
    cached = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    assert (await token_exchange_check(http, token_service.url, cached))[0] == 200
    await asyncio.to_thread(keycloak.stop)
    try:
        status, body = await token_exchange_check(http, token_service.url, uncached)
        assert status == 503, body
        assert body["allow"] is False, body
        assert body["reason"], body
        from_cache, _ = await token_exchange_check(http, token_service.url, cached)
        assert from_cache == 200  # from the cache
    finally:
        await asyncio.to_thread(keycloak.start)
    back = time.monotonic()
    while True:
        status, body = await token_exchange_check(http, token_service.url, uncached)
        if status == 200 or time.monotonic() - back > 30:
            break
        await asyncio.sleep(0.2)
    recovered_after = time.monotonic() - back
    assert status == 200, body
    assert recovered_after <= 5.0, f"recovered {recovered_after:.1f}s after Keycloak was ready"


# -- OPA stopped: every decision path denies ---------------------------------------------------
@pytest.fixture
def opa(testbed_run_dir: Path) -> Iterator[OpaServer]:
    server = OpaServer(testbed_run_dir / "rel-opa", load=[], name="opa-reliability")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_opa_down_denies_every_decision_path_then_recovers(
    http: aiohttp.ClientSession,
    keycloak: kc.Keycloak,
    opa: OpaServer,
    tmp_path: Path,
) -> None:
    token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    settings = policy_settings(keycloak, tmp_path / "opa", engine="opa", opa_url=opa.url)
    settings = settings.model_copy(
        update={"wristband": settings.wristband.model_copy(update={"cache_ttl_s": 0})}
    )
    auth = {"Authorization": f"Bearer {token}"}
    call = auth | {
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_list",
    }
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pods_list"}}
    )
    listing = auth | {"x-mcp-method": "tools/list", "x-mcp-servername": "mcpBroker"}

    async def answers(svc_url: str) -> dict[str, tuple[int, Any]]:
        out: dict[str, tuple[int, Any]] = {}
        for name, method, path, kwargs in (
            ("check tools/call", "POST", "/check/mcp", {"headers": call, "data": body}),
            ("check tools/list", "POST", "/check/mcp", {"headers": listing}),
            (
                "decide",
                "POST",
                "/v1/decide",
                {"headers": auth, "json": {"server": SERVER, "tool": "pods_list"}},
            ),
            (
                "filter",
                "POST",
                "/v1/filter",
                {"headers": auth, "json": {"server": SERVER, "tools": ["pods_list"]}},
            ),
        ):
            async with http.request(method, f"{svc_url}{path}", **kwargs) as resp:
                out[name] = (resp.status, await resp.json())
        return out

    async with running_policy(settings) as svc:
        healthy = await answers(svc.url)
        assert healthy["check tools/call"][0] == 200, healthy
        opa.stop()
        try:
            down = await answers(svc.url)
        finally:
            opa.start()
        problems = {
            name: (status, payload)
            for name, (status, payload) in down.items()
            if status == 200 or payload.get("allow") is not False or not payload.get("reason")
        }
        # /v1/filter answers a list, not a decision: it must not return any allowed tool.
        if "filter" in problems:
            status, payload = problems["filter"]
            if status != 200 or (not payload.get("allowed") and not payload.get("tools")):
                problems.pop("filter")
        assert not problems, f"with OPA down these paths did not deny: {problems}"
        deadline = time.monotonic() + 15
        while True:
            again = await answers(svc.url)
            if again["check tools/call"][0] == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert again["check tools/call"][0] == 200, again
