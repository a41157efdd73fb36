"""DNS rebinding and cross-site protection of the policy service (real Keycloak tokens): its JSON
APIs and public key refuse a foreign Host or Origin with an explicit ``allow: false``; the ext_authz
check, which Envoy calls with the original request's Host, does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)

SERVICE_HOST = "policy.kmg-system.svc.cluster.local"
EVIL = "evil.example"


@pytest.fixture(scope="module")
async def service(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    settings = policy_settings(
        keycloak, policy_work / "host-origin", allowed_hosts=[f"{SERVICE_HOST}:*"]
    )
    async with running_policy(settings) as running:
        yield running


async def _request(
    method: str, url: str, *, json: Any = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,  # as the gateway (caller_auth)
        http.request(method, url, json=json, headers=headers) as resp,
    ):
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


def _decisions(service: RunningPolicy) -> int:
    log = service.decision_log
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_apis_and_public_key_refuse_foreign_host_and_origin(
    service: RunningPolicy, viewer_token: str
) -> None:
    decide = f"{service.url}/v1/decide"
    body = {"server": SERVER, "tool": "pods_list", "annotation_hints": "readOnly=true"}
    auth = {"Authorization": f"Bearer {viewer_token}"}
    logged = _decisions(service)
    for url, payload in ((decide, body), (f"{service.url}/v1/filter", {"tools": []})):
        status, answer = await _request("POST", url, json=payload, **auth, Origin=f"http://{EVIL}")
        assert (status, answer["allow"], answer["error"]) == (403, False, "origin_not_allowed")
        status, answer = await _request("POST", url, json=payload, **auth, Host=f"{EVIL}:8080")
        assert (status, answer["allow"], answer["error"]) == (421, False, "host_not_allowed")
        assert answer["reason"]
    assert _decisions(service) == logged  # no decision was taken
    for path in ("/.well-known/jwks.json", "/v1/wristband/public-key"):
        status, answer = await _request("GET", service.url + path, Host=EVIL)
        assert (status, answer["error"]) == (421, "host_not_allowed"), path
    # The names it is configured for, and no Origin: served.
    status, answer = await _request("POST", decide, json=body, **auth, Host=f"{SERVICE_HOST}:8080")
    assert (status, answer["allow"]) == (200, True), answer
    status, answer = await _request("GET", f"{service.url}/.well-known/jwks.json")
    assert status == 200
    assert answer["keys"]


async def test_ext_authz_check_keeps_the_original_host(
    service: RunningPolicy, viewer_token: str
) -> None:
    headers = {
        "Authorization": f"Bearer {viewer_token}",
        "x-mcp-method": "tools/list",
        "x-mcp-servername": "mcpBroker",
        "Host": "mcp.gateway.example",
        "Origin": f"http://{EVIL}",
    }
    status, answer = await _request("POST", f"{service.url}/check/mcp", **headers)
    assert (status, answer["allow"]) == (200, True), answer
