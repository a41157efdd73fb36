"""tools/list that knows the cluster's RBAC (``rbac_list``), against the real testbed.

Cluster A's real kube-apiserver answers the SelfSubjectRulesReviews, made with the demo user's
own Keycloak token exchanged at Keycloak for the server's audience (the audience cluster A
accepts, as the backend's tokens carry it). The user ``mcp`` holds every tool role, but RBAC
gives it only ClusterRole ``view`` in a namespace of its own here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from gateway_plugins.policy.config import RbacCluster, RbacListSettings, RbacTokenExchange
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    CHANGING_TOOLS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.ports import free_port
from tests.testbed.rbac_grants import view_only_in

pytestmark = pytest.mark.timeout(300)

VIEW_NAMESPACE = "rbac-list-view"
VIEW_TOOLS = {"pods_list", "pods_get", "pods_log", "resources_get", "resources_list", "events_list"}


@pytest.fixture(scope="module")
async def view_only_namespace(
    admin_client: k8s.ApiClient, cluster_a: Cluster, mcp_token: str
) -> str:
    """Namespace where the user ``mcp`` is bound to ClusterRole ``view`` (and to nothing else)."""
    await cluster_a.wait_token_accepted(mcp_token)  # the API server has loaded Keycloak's keys
    await view_only_in(admin_client, VIEW_NAMESPACE, "mcp")
    return VIEW_NAMESPACE


def _exchange(keycloak: kc.Keycloak, work: Path) -> RbacTokenExchange:
    """Keycloak's RFC 8693 exchange by the gateway's client, for the server's audience."""
    secret = work / "exchange.secret"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(keycloak.gateway_client_secret)
    secret.chmod(0o600)
    return RbacTokenExchange(
        url=keycloak.token_url(REALM_MCP),
        audience=SERVER,
        client_id=keycloak.gateway_client_id,
        client_secret_file=secret,
        ca_file=keycloak.ca_file,
    )


def _settings(
    keycloak: kc.Keycloak,
    work: Path,
    cluster: Cluster,
    namespace: str,
    *,
    enabled: bool = True,
    api_server: str | None = None,
    exchange: bool = True,
) -> Any:
    rbac = RbacListSettings(
        enabled=enabled,
        clusters=[
            RbacCluster(
                server=SERVER,
                api_server=api_server or cluster.server,
                ca_file=cluster.ca_file,
                namespaces=[namespace],
                token_exchange=_exchange(keycloak, work) if exchange else None,
            )
        ],
        timeout_s=5.0,
    )
    # The signed-list cache off: every tools/list computes its list, so the RBAC cache is what
    # spares the second review.
    return policy_settings(keycloak, work, rbac_list=rbac, wristband={"cache_ttl_s": 0})


async def _tools_list(svc: RunningPolicy, token: str) -> dict[str, list[str]]:
    headers = {
        **CALLER_HEADERS,
        "Authorization": f"Bearer {token}",
        "x-mcp-method": "tools/list",
        "x-mcp-servername": "mcpBroker",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{svc.url}/check/mcp", headers=headers) as resp,
    ):
        payload = await resp.json()
        assert resp.status == 200, payload
        allowed: dict[str, list[str]] = payload["allowed_tools"]
        return allowed


async def _metric(svc: RunningPolicy, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
async def rbac_on(
    keycloak: kc.Keycloak, policy_work: Path, cluster_a: Cluster, view_only_namespace: str
) -> AsyncIterator[RunningPolicy]:
    work = policy_work / f"rbac-on-{uuid.uuid4().hex[:8]}"
    settings = _settings(keycloak, work, cluster_a, view_only_namespace)
    async with running_policy(settings) as running:
        yield running


async def test_a_view_only_user_gets_no_write_tools_when_on_and_all_roles_when_off(
    keycloak: kc.Keycloak,
    policy_work: Path,
    cluster_a: Cluster,
    view_only_namespace: str,
    rbac_on: RunningPolicy,
    mcp_token: str,
) -> None:
    filtered = set((await _tools_list(rbac_on, mcp_token))[SERVER])
    assert filtered >= VIEW_TOOLS, filtered
    assert {"configuration_view", "configuration_contexts_list"} <= filtered  # need no RBAC
    assert not filtered & set(CHANGING_TOOLS), filtered  # view grants no write
    assert "helm_list" not in filtered  # view cannot read helm's release Secrets
    assert await _metric(rbac_on, "policy_rbac_reviews_total", server=SERVER, outcome="ok") == 1

    off = _settings(
        keycloak, policy_work / "rbac-off", cluster_a, view_only_namespace, enabled=False
    )
    async with running_policy(off) as running:
        role_only = set((await _tools_list(running, mcp_token))[SERVER])
        assert await _metric(running, "policy_rbac_reviews_total") == 0
    assert set(CHANGING_TOOLS) <= role_only  # the roles grant them; nothing asks the cluster
    assert filtered < role_only


async def test_a_warm_cache_spares_the_review_and_users_are_kept_apart(
    rbac_on: RunningPolicy, mcp_token: str, viewer_token: str
) -> None:
    first = await _tools_list(rbac_on, mcp_token)
    second = await _tools_list(rbac_on, mcp_token)
    assert first == second
    assert await _metric(rbac_on, "policy_rbac_reviews_total", server=SERVER) == 1
    assert await _metric(rbac_on, "policy_rbac_list_cache_total", result="hit") == 1
    # Another user has results of its own: viewer has no RBAC in the namespace at all.
    viewer = set((await _tools_list(rbac_on, viewer_token))[SERVER])
    assert await _metric(rbac_on, "policy_rbac_reviews_total", server=SERVER) == 2
    assert not viewer & {"pods_list", "resources_get", "events_list"}, viewer
    assert "configuration_view" in viewer


async def test_concurrent_lists_of_one_user_share_one_review(
    rbac_on: RunningPolicy, mcp_token: str
) -> None:
    lists = await asyncio.gather(*(_tools_list(rbac_on, mcp_token) for _ in range(8)))
    assert all(one == lists[0] for one in lists)
    assert await _metric(rbac_on, "policy_rbac_reviews_total", server=SERVER) == 1
    assert await _metric(rbac_on, "policy_rbac_list_cache_total", result="miss") == 1


async def test_an_unreachable_api_server_lists_by_role_with_a_metric_and_a_log_line(
    keycloak: kc.Keycloak,
    policy_work: Path,
    cluster_a: Cluster,
    view_only_namespace: str,
    mcp_token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    settings = _settings(
        keycloak, policy_work / "rbac-dead", cluster_a, view_only_namespace, api_server=dead
    )
    caplog.set_level(logging.WARNING, logger="gateway_plugins.policy.rbac_list")
    async with running_policy(settings) as running:
        listed = set((await _tools_list(running, mcp_token))[SERVER])
        assert set(CHANGING_TOOLS) <= listed  # fail soft: the role-derived list
        fallbacks = await _metric(
            running, "policy_rbac_list_fallbacks_total", server=SERVER, reason="unavailable"
        )
        assert fallbacks == 1
        # The failure is remembered (failure_ttl_s): the next list does not knock again.
        await _tools_list(running, mcp_token)
        assert await _metric(running, "policy_rbac_reviews_total", outcome="unavailable") == 1
        assert await _metric(running, "policy_rbac_list_fallbacks_total", server=SERVER) == 2
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("rbac_list")]
    assert any("lists its tools by role only" in m and dead in m for m in lines), lines
    assert not any(mcp_token in m or mcp_token[-40:] in m for m in caplog.messages)


async def test_a_token_the_cluster_refuses_lists_by_role(
    keycloak: kc.Keycloak,
    policy_work: Path,
    cluster_a: Cluster,
    view_only_namespace: str,
    cluster_b: Cluster,
    mcp_token: str,
) -> None:
    # Cluster B trusts only realm cluster-b: the user's token of realm mcp gets a real 401.
    settings = _settings(
        keycloak, policy_work / "rbac-raw", cluster_b, view_only_namespace, exchange=False
    )
    async with running_policy(settings) as running:
        listed = set((await _tools_list(running, mcp_token))[SERVER])
        assert set(CHANGING_TOOLS) <= listed
        assert (
            await _metric(
                running, "policy_rbac_list_fallbacks_total", server=SERVER, reason="refused"
            )
            == 1
        )


async def test_the_users_own_token_works_where_the_cluster_accepts_it(
    keycloak: kc.Keycloak,
    policy_work: Path,
    cluster_a: Cluster,
    view_only_namespace: str,
    mcp_token: str,
) -> None:
    # The demo client's tokens also name the servers as audiences, which cluster A accepts:
    # no exchange needed, the same narrowed list.
    settings = _settings(
        keycloak, policy_work / "rbac-own", cluster_a, view_only_namespace, exchange=False
    )
    async with running_policy(settings) as running:
        listed = set((await _tools_list(running, mcp_token))[SERVER])
        assert listed >= VIEW_TOOLS
        assert not listed & set(CHANGING_TOOLS)
        assert await _metric(running, "policy_rbac_reviews_total", outcome="ok") == 1


def test_settings_refuse_a_plain_http_api_server_and_an_empty_cluster_list() -> None:
    with pytest.raises(ValueError, match="must be https"):
        RbacCluster(server=SERVER, api_server="http://127.0.0.1:6443")
    with pytest.raises(ValueError, match="at least one entry"):
        RbacListSettings(enabled=True)
    assert json.loads(RbacListSettings().model_dump_json())["enabled"] is False


@contextlib.asynccontextmanager
async def _silent_api_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An address that accepts connections and never answers: an API server hung mid-handshake.

    A stand-in (not a real API server): the real one cannot be made to hang on demand without
    stopping it for every other test of the session. Yields its URL and an event set on the
    first connection."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", connected
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_hung_api_server_times_out_and_the_bound_refuses_more_at_once(
    keycloak: kc.Keycloak,
    policy_work: Path,
    cluster_a: Cluster,
    view_only_namespace: str,
    mcp_token: str,
    viewer_token: str,
) -> None:
    async with _silent_api_server() as (url, connected):
        settings = _settings(
            keycloak,
            policy_work / "rbac-hung",
            cluster_a,
            view_only_namespace,
            api_server=url,
            exchange=False,
        )
        rbac = settings.rbac_list.model_copy(
            update={"max_concurrent_reviews": 1, "max_waiting_reviews": 0, "timeout_s": 2.0}
        )
        settings = settings.model_copy(update={"rbac_list": rbac})
        async with running_policy(settings) as running:
            first = asyncio.create_task(_tools_list(running, mcp_token))
            await asyncio.wait_for(connected.wait(), 10)  # mcp's review holds the only slot
            # viewer's review finds the slot taken and no room to wait: role-only at once.
            viewer = set((await _tools_list(running, viewer_token))[SERVER])
            assert "pods_list" in viewer  # the role-derived list
            assert not first.done()
            assert (
                await _metric(running, "policy_rbac_list_fallbacks_total", reason="overloaded") == 1
            )
            listed = set((await first)[SERVER])  # mcp's round ran out of time
            assert set(CHANGING_TOOLS) <= listed
            assert await _metric(running, "policy_rbac_list_fallbacks_total", reason="timeout") == 1
