"""The real broker/router run as the controller's broker Deployment's pod, on the configuration
the controller wrote: it lists our backend's tools with the registration's prefix, and it is the
workload issue 14's NetworkPolicy and Istio rules admit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.e2e.mcp_http import session
from tests.manifests import render
from tests.manifests.gateway_controller.controller_state import (
    BROKER_DEPLOYMENT,
    BROKER_META_TOOLS,
    servers_by_name,
    wait_for,
)
from tests.testbed.cluster import Cluster
from tests.testbed.fixtures_identity import SessionKeycloak
from tests.testbed.identity_plan import BACKEND_AUDIENCE


async def test_broker_lists_our_backend_tools_with_the_registration_prefix(
    broker: str, backend_url: str, keycloak: SessionKeycloak, registered: dict[str, Any]
) -> None:
    """The broker discovers through the backend's token binding with the credential the
    controller gave it (issue 14: the backend takes no token that is not exchanged for it, and
    the broker's discovery bearer for listing only)."""
    token = await keycloak.auser_token("mcp", "mcp")
    exchanged = (await keycloak.aexchange(token, audience=BACKEND_AUDIENCE))["access_token"]
    async with session(f"{backend_url}/mcp", exchanged) as direct:
        backend_tools = {t.name for t in (await direct.list_tools()).tools}
    assert backend_tools, "the backend lists no tools"
    prefix = servers_by_name(registered)[BACKEND_AUDIENCE]["prefix"]
    expected = {prefix + name for name in backend_tools}

    async def federated() -> set[str]:
        # protocol negotiated as a current client does (server/discover): the broker lists a
        # server's tools to the clients of the protocol it negotiated with that server
        async with session(broker, token, mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
        return names if expected <= names else set()

    names = await wait_for("the broker listing the backend's tools", federated, within=60)
    assert names - expected <= BROKER_META_TOOLS, f"unexpected tools {names - expected}"
    assert not names & backend_tools, "an un-prefixed backend tool leaked into the list"


async def test_the_broker_is_the_workload_the_manifests_admit(
    registered: dict[str, Any], cluster_a: Cluster
) -> None:
    """Issue 14's layer-4 and mesh rules name the broker by namespace + pod labels
    (NetworkPolicy) and by ServiceAccount (Istio principal): they are the ones of the Deployment
    the real controller created, so the rules admit the broker's discovery and nothing else."""
    async with cluster_a.admin_client() as api:
        deployment = await k8s.AppsV1Api(api).read_namespaced_deployment(
            BROKER_DEPLOYMENT[1], BROKER_DEPLOYMENT[0]
        )
    labels = deployment.spec.template.metadata.labels or {}
    account = deployment.spec.template.spec.service_account_name
    base = await asyncio.to_thread(render.render, "base")
    backend_rule = next(
        o
        for o in base
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "mcp-backend-from-gateway"
    )
    peers = [peer for rule in backend_rule["spec"]["ingress"] for peer in rule["from"]]
    broker_peers = [
        p
        for p in peers
        if p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == BROKER_DEPLOYMENT[0]
    ]
    assert len(broker_peers) == 1, peers
    assert broker_peers[0]["podSelector"]["matchLabels"].items() <= labels.items()
    istio = await asyncio.to_thread(render.render, "overlays/istio-ext-authz")
    backend_allow = next(
        o
        for o in istio
        if o["kind"] == "AuthorizationPolicy" and o["metadata"]["name"] == "mcp-backend-callers"
    )
    principals = {
        p
        for rule in backend_allow["spec"]["rules"]
        for f in rule["from"]
        for p in f["source"]["principals"]
    }
    assert f"cluster.local/ns/{BROKER_DEPLOYMENT[0]}/sa/{account}" in principals
