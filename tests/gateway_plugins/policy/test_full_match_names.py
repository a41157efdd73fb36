"""Issue 14 item 5 through the running policy service: the default namespace rule keeps
``pods_exec`` out of kube-system, and no spelling of kube-system gets past it. Before the fix,
``"kube-system\\n"`` passed the input check (``re.match`` with ``$``) and, not being equal to
"kube-system", the rule's denied list: the demo user ``mcp`` (who holds pods_exec) was allowed.
Real Keycloak token, the repo's policy and data, embedded engine.
"""

from __future__ import annotations

import json
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
from tests.gateway_plugins.policy.test_input import LOOKALIKE_NAMESPACES

pytestmark = pytest.mark.timeout(300)

INVALID = "bad request: argument 'namespace' is not a valid Kubernetes namespace name"


@pytest.fixture(scope="module")
async def service(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    async with running_policy(policy_settings(keycloak, policy_work / "full-match")) as running:
        yield running


@pytest.fixture(scope="module")
async def exec_user(keycloak: Any) -> str:
    token: str = await keycloak.auser_token("mcp", "mcp")
    return token


async def _exec_check(svc: RunningPolicy, token: str, namespace: str) -> tuple[int, Any]:
    arguments = {"name": "p", "namespace": namespace}
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "pods_exec", "arguments": arguments}}  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "x-mcp-method": "tools/call",
               "x-mcp-servername": SERVER, "x-mcp-toolname": "pods_exec"}  # fmt: skip
    async with (
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
        http.post(f"{svc.url}/check/mcp", headers=headers, data=json.dumps(body)) as resp,
    ):
        return resp.status, await resp.json()


async def _exec_decide(svc: RunningPolicy, token: str, namespace: str) -> tuple[int, Any]:
    body = {"server": SERVER, "tool": "pods_exec", "arguments": {"namespace": namespace}}
    async with (
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
        http.post(
            f"{svc.url}/v1/decide", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_kube_system_lookalikes_are_refused_not_allowed(
    service: RunningPolicy, exec_user: str
) -> None:
    for namespace in LOOKALIKE_NAMESPACES:
        status, answer = await _exec_check(service, exec_user, namespace)
        assert (status, answer["allow"], answer["reason"]) == (400, False, INVALID), namespace
        status, answer = await _exec_decide(service, exec_user, namespace)
        assert (status, answer["allow"], answer["reason"]) == (400, False, INVALID), namespace


async def test_the_genuine_names_are_decided_by_the_rule(
    service: RunningPolicy, exec_user: str
) -> None:
    status, answer = await _exec_check(service, exec_user, "kube-system")
    assert (status, answer["allow"]) == (403, False)
    assert (
        answer["reason"]
        == "pods_exec may not run in namespace kube-system: no shell in system pods"
    )
    status, answer = await _exec_decide(service, exec_user, "kube-system")
    assert (status, answer["allow"]) == (200, False)
    for call in (_exec_check, _exec_decide):
        status, answer = await call(service, exec_user, "kube-system-tools")  # another namespace
        assert (status, answer["allow"]) == (200, True), answer
