"""Two users hammering concurrently never receive each other's exchanged token, decision or data:
at the token service, at the policy service, at the backend, and through the whole gateway."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import jwt
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from gateway_plugins.policy.wristband import LEGACY_HEADER
from mcp_backend.config import Settings
from tests.e2e.mcp_http import open_session, result_of
from tests.gateway_plugins.policy.running import SERVER, RunningPolicy
from tests.gateway_plugins.token_exchange.running import RunningService
from tests.mcp_backend.conftest import RunningBackend, cluster_entry, start_backend, stop_backend
from tests.testbed import keycloak as kc
from tests.testbed import leak_scan
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

pytestmark = pytest.mark.timeout(900)

ROUNDS = 60  # requests per user and test, all in flight together
USERS = ("mcp", "viewer")
PER_USER_CALLS = Settings().max_concurrent_calls_per_user


class Tokens(dict[str, str]):
    def __repr__(self) -> str:
        return f"Tokens({sorted(self)}, values redacted)"


@pytest.fixture(scope="module")
async def user_tokens(keycloak: kc.Keycloak) -> Tokens:
    return Tokens({u: await asyncio.to_thread(keycloak.user_token, u, u) for u in USERS})


def _interleaved() -> list[str]:
    order = [u for u in USERS for _ in range(ROUNDS)]
    random.Random(8).shuffle(order)
    return order


async def test_exchanged_tokens_never_cross_users(
    http: aiohttp.ClientSession, token_service: RunningService, user_tokens: Tokens
) -> None:
    async def one(user: str) -> tuple[str, int, str]:
        headers = {
            "authorization": f"Bearer {user_tokens[user]}",
            "x-mcp-servername": BACKEND_AUDIENCE,
        }
        async with http.post(f"{token_service.url}/check/mcp", headers=headers) as resp:
            issued = resp.headers.get("Authorization", "").removeprefix("Bearer ")
            return user, resp.status, issued

    results = await asyncio.gather(*(one(u) for u in _interleaved()))
    issued_by_user: dict[str, set[str]] = {u: set() for u in USERS}
    for user, status, issued in results:
        assert status == 200
        claims = jwt.decode(issued, options={"verify_signature": False})
        assert claims["preferred_username"] == user
        issued_by_user[user].add(issued)
    assert not issued_by_user["mcp"] & issued_by_user["viewer"]


async def test_decisions_never_cross_users(
    http: aiohttp.ClientSession, policy_service: RunningPolicy, user_tokens: Tokens
) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pods_delete"}}
    )

    async def call(user: str) -> tuple[str, int]:
        headers = {
            "Authorization": f"Bearer {user_tokens[user]}",
            "x-mcp-method": "tools/call",
            "x-mcp-servername": SERVER,
            "x-mcp-toolname": "pods_delete",
        }
        async with http.post(f"{policy_service.url}/check/mcp", headers=headers, data=body) as resp:
            return user, resp.status

    async def listing(user: str) -> tuple[str, list[str]]:
        headers = {
            "Authorization": f"Bearer {user_tokens[user]}",
            "x-mcp-method": "tools/list",
            "x-mcp-servername": "mcpBroker",
        }
        async with http.post(f"{policy_service.url}/check/mcp", headers=headers) as resp:
            assert resp.status == 200
            signed = resp.headers[LEGACY_HEADER]
        claims = jwt.decode(signed, options={"verify_signature": False})
        return user, json.loads(claims["allowed-tools"]).get(SERVER, [])

    order = _interleaved()
    calls, lists = await asyncio.gather(
        asyncio.gather(*(call(u) for u in order)), asyncio.gather(*(listing(u) for u in order))
    )
    assert {(u, s) for u, s in calls} == {("mcp", 200), ("viewer", 403)}
    by_user: dict[str, set[tuple[str, ...]]] = {u: set() for u in USERS}
    for user, tools in lists:
        by_user[user].add(tuple(sorted(tools)))
    assert len(by_user["mcp"]) == 1, by_user
    assert len(by_user["viewer"]) == 1, by_user
    assert "pods_delete" in next(iter(by_user["mcp"]))
    assert "pods_delete" not in next(iter(by_user["viewer"]))


# -- backend data ------------------------------------------------------------------------------
NAMESPACES = {"alice": "rel-iso-alice", "bob": "rel-iso-bob"}


@pytest.fixture(scope="module")
async def data_users(cluster_a: Cluster, service_account_token: Any) -> dict[str, str]:
    """Two service accounts, each allowed to read ConfigMaps in its own namespace only."""
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        for user, ns in NAMESPACES.items():
            with contextlib.suppress(ApiException):
                await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
            with contextlib.suppress(ApiException):
                await core.create_namespaced_config_map(
                    ns,
                    k8s.V1ConfigMap(
                        metadata=k8s.V1ObjectMeta(name="mine"), data={"owner": f"owner-is-{user}"}
                    ),
                )
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    return {
        user: await service_account_token(
            cluster_a, name=f"rel-iso-{user}", namespace=ns, rules=rules
        )
        for user, ns in NAMESPACES.items()
    }


@pytest.fixture(scope="module")
async def iso_backend(cluster_a: Cluster) -> AsyncIterator[RunningBackend]:
    # Every call of a user in flight together is the point here: no per-user call limit (the
    # limit itself is tested in tests/mcp_backend/transport/test_caller_limits.py).
    settings = {"clusters": [cluster_entry(cluster_a, default=True)]}
    running = await start_backend(
        Settings.model_validate({**settings, "max_concurrent_calls_per_user": 0})
    )
    yield running
    await stop_backend(running)


async def test_backend_data_never_crosses_users(
    iso_backend: RunningBackend, data_users: dict[str, str]
) -> None:
    async def one(http: httpx2.AsyncClient, user: str, ns_of: str) -> tuple[str, str, str]:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "resources_get",
                "arguments": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "mine",
                    "namespace": NAMESPACES[ns_of],
                    "output": "yaml",
                },
            },
        }
        resp = await http.post(
            iso_backend.url,
            json=body,
            headers={
                "Authorization": f"Bearer {data_users[user]}",
                "Accept": "application/json, text/event-stream",
            },
        )
        assert resp.status_code == 200, resp.text
        text = "".join(c.get("text", "") for c in resp.json()["result"]["content"])
        leak_scan.record_output(f"resources_get as {user}", text)
        return user, ns_of, text

    jobs = [(u, o) for u in NAMESPACES for o in NAMESPACES for _ in range(ROUNDS // 2)]
    random.Random(3).shuffle(jobs)
    async with httpx2.AsyncClient(timeout=60) as http:
        results = await asyncio.gather(*(one(http, u, o) for u, o in jobs))
    for user, ns_of, text in results:
        if user == ns_of:
            assert f"owner-is-{user}" in text, text[:300]
        else:
            assert "forbidden" in text.lower(), (user, ns_of, text[:300])
            assert "owner-is-" not in text


# -- the whole gateway -------------------------------------------------------------------------
async def test_gateway_two_users_concurrently(local_gateway: LocalGateway) -> None:
    """Through the real MCP Gateway: each user in a gateway session of their own (the broker's
    Mcp-Session-Id), lists and calls interleaved; nobody ever gets the other's list or rights."""
    tokens = {u: local_gateway.user_token(u) for u in USERS}
    sessions = {u: await open_session(local_gateway.mcp_url, tokens[u]) for u in USERS}
    pods_delete = local_gateway.tool("pods_delete")

    ids = itertools.count(1)

    async def post(http: httpx2.AsyncClient, user: str, body: dict[str, Any]) -> httpx2.Response:
        # The broker refuses a request id already in flight in the session: unique ids.
        return await http.post(
            local_gateway.mcp_url,
            json={**body, "id": next(ids)},
            headers={
                "Authorization": f"Bearer {tokens[user]}",
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": sessions[user],
                "MCP-Protocol-Version": "2025-11-25",
            },
        )

    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    delete = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": pods_delete,
            "arguments": {"name": "rel-no-such-pod", "namespace": DEMO_NAMESPACE},
        },
    }
    # The gateway's backends run with the default per-user call limit: each user keeps at
    # most that many tool calls in flight (tools/list is not counted), so none is refused busy.
    in_flight = {u: asyncio.Semaphore(PER_USER_CALLS) for u in USERS}

    async def call(http: httpx2.AsyncClient, user: str) -> httpx2.Response:
        async with in_flight[user]:
            return await post(http, user, delete)

    order = [u for u in USERS for _ in range(20)]
    random.Random(5).shuffle(order)
    async with httpx2.AsyncClient(timeout=120) as http:
        lists, deletes = await asyncio.gather(
            asyncio.gather(*(post(http, u, listing) for u in order)),
            asyncio.gather(*(call(http, u) for u in order)),
        )
    seen: dict[str, set[tuple[str, ...]]] = {u: set() for u in USERS}
    for user, resp in zip(order, lists, strict=True):
        assert resp.status_code == 200, resp.text[:300]
        seen[user].add(tuple(sorted(t["name"] for t in result_of(resp)["tools"])))
    assert len(seen["mcp"]) == 1, seen
    assert len(seen["viewer"]) == 1, seen
    assert pods_delete in next(iter(seen["mcp"]))
    assert pods_delete not in next(iter(seen["viewer"]))
    for user, resp in zip(order, deletes, strict=True):
        leak_scan.record_output(f"gateway pods_delete as {user}", resp.text)
        if user == "viewer":
            assert resp.status_code == 403, resp.text[:300]
            assert "grants tool pods_delete" in resp.json()["error"]["message"]
        else:
            assert resp.status_code == 200, resp.text[:300]
            assert "rel-no-such-pod" in resp.text, resp.text[:300]
            assert "not found" in resp.text, resp.text[:300]
