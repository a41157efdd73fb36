"""The access-control middleware is the one place the policy is enforced: every request of a
cluster's client session passes it, whoever sends it (the client's calls, exec's WebSocket
handshake, anything else holding the session), against the real API server of cluster A."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from mcp_backend.access.client_middleware import AccessControlMiddleware
from mcp_backend.access.policy import AccessPolicy
from mcp_backend.config import DEFAULT_DENIED, DeniedKind, Settings
from mcp_backend.errors import AccessDenied
from mcp_backend.kube.client import KubeClient
from mcp_backend.kube.pod_exec import exec_in_pod
from mcp_backend.metrics import Metrics
from tests.mcp_backend.conftest import NS, Tokens, cluster_entry
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

PODS_DENIED = AccessPolicy([*DEFAULT_DENIED, DeniedKind(group="", kind="Pod")])
TOKEN_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "mw-token", "annotations": {"kubernetes.io/service-account.name": "x"}},
    "type": "kubernetes.io/service-account-token",
}


@pytest.fixture
async def client(cluster_a: Cluster) -> AsyncIterator[KubeClient]:
    """A client of cluster A whose policy also denies Pods."""
    settings = Settings.model_validate({"clusters": [cluster_entry(cluster_a, default=True)]})
    kube = KubeClient(settings.clusters[0], settings, PODS_DENIED, Metrics())
    yield kube
    await kube.close()


async def test_every_request_of_the_cluster_session_is_admitted_whoever_sends_it(
    client: KubeClient, tokens: Tokens, workloads: Any
) -> None:
    """Requests sent on the session directly, past :class:`KubeClient`'s methods, are refused
    as the client's own calls are; an allowed one reaches the cluster (so the check can pass)."""
    session = client.session()
    auth = {"Authorization": f"Bearer {tokens.admin}"}
    async with session.get(f"api/v1/namespaces/{NS}/configmaps", headers=auth) as resp:
        assert resp.status == 200
    with pytest.raises(AccessDenied, match=r"^list clusterroles\.rbac\.authorization\.k8s\.io: "):
        await session.get("apis/rbac.authorization.k8s.io/v1/clusterroles", headers=auth)
    with pytest.raises(AccessDenied, match="makes the cluster issue a token of a ServiceAccount"):
        await session.post(
            f"api/v1/namespaces/{NS}/secrets",
            data=json.dumps(TOKEN_SECRET).encode(),
            headers={**auth, "Content-Type": "application/json"},
        )
    exec_path = f"api/v1/namespaces/{NS}/pods/web-0/exec"
    with pytest.raises(AccessDenied) as on_the_wire:
        await session.ws_connect(exec_path, params={"command": "ls"}, headers=auth)
    with pytest.raises(AccessDenied) as through_the_client:
        await exec_in_pod(client, tokens.admin, NS, "web-0", ["ls"], None, 10)
    expected = "create pods/exec 'web-0': kind Pod is denied by this server's policy"
    assert on_the_wire.value.message.startswith(expected)
    assert through_the_client.value.message == on_the_wire.value.message


def test_the_server_path_prefix_is_taken_off_before_the_check() -> None:
    layer = AccessControlMiddleware(AccessPolicy(DEFAULT_DENIED), "https://k8s.example/c/one/")
    base = "https://k8s.example/c/one"
    assert layer.api_path(URL(f"{base}/api/v1/namespaces/x/secrets")) == (
        "/api/v1/namespaces/x/secrets"
    )
    assert layer.api_path(URL(base)) == "/"
    with pytest.raises(AccessDenied, match="is not a path of this cluster's API server"):
        layer.api_path(URL("https://k8s.example/c/other/api/v1/secrets"))
    with pytest.raises(AccessDenied, match="is not a plain API path"):
        layer.api_path(URL(f"{base}/api/v1/namespaces/%2E%2E/secrets", encoded=True))
    no_prefix = AccessControlMiddleware(AccessPolicy(DEFAULT_DENIED), "https://k8s.example")
    assert no_prefix.api_path(URL("https://k8s.example/api/v1/pods")) == "/api/v1/pods"


async def test_a_refused_request_is_never_sent() -> None:
    """Behind a server path prefix, on a port nobody listens on: a refused request raises the
    refusal, not the connection error sending it would have met; so does a body this layer
    cannot read. An allowed request does try to connect."""
    server = f"http://127.0.0.1:{free_port()}/prefix"
    layer = AccessControlMiddleware(AccessPolicy(DEFAULT_DENIED), server)

    async def stream() -> AsyncIterator[bytes]:
        yield b"{}"

    async with aiohttp.ClientSession(base_url=server + "/", middlewares=(layer,)) as session:
        with pytest.raises(AccessDenied, match="every kind of API group"):
            await session.get("apis/rbac.authorization.k8s.io/v1/clusterroles")
        with pytest.raises(AccessDenied, match="cannot be checked"):
            await session.post("api/v1/namespaces/x/configmaps", data=stream())
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get("api/v1/namespaces/x/configmaps")
