"""The helm API guard on the wire: whatever the earlier checks approved, a request of helm on a
denied kind, or creating a service-account-token Secret, is refused by the access control of the
cluster session the guard forwards through; other requests reach the real API server."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from yarl import URL

from mcp_backend.errors import AccessDenied
from mcp_backend.helm.api_guard import ApiGuard
from tests.mcp_backend.conftest import (
    NS,
    Tokens,
)
from tests.mcp_backend.helm.releases import (
    SA,
    TOKEN_SECRET,
    exists,
    install_of,
    release_records,
    write_chart,
)
from tests.testbed.cluster import Cluster

GUARDED = {
    "a template": SA,
    "a hook": SA.replace(
        "metadata: {name: NAME-sa}",
        'metadata: {name: NAME-sa, annotations: {"helm.sh/hook": pre-install}}',
    ),
}


@pytest.mark.parametrize("case", sorted(GUARDED))
async def test_the_api_guard_stops_helm_on_a_denied_kind_whatever_was_checked(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    case: str,
) -> None:
    """The last line of defence: helm reaches the cluster only through the backend's API guard,
    which refuses every request on a denied kind. Played with every earlier check passed (the
    ServiceAccount counted as approved, as a ``rand`` hook could make the dry run believe):
    the guard still stops helm, and the cluster never sees the ServiceAccount."""
    release = f"hg{sorted(GUARDED).index(case)}"
    chart = write_chart(
        charts_dir / tmp_path.name,
        {"templates/sa.yaml": GUARDED[case].replace("NAME", "{{ .Release.Name }}")},
    )
    try:
        async with install_of(backend, tokens.admin, chart, release) as install:
            with pytest.raises(AccessDenied) as refused:
                await install({("", "ConfigMap"), ("", "ServiceAccount")})
        message = refused.value.message
        assert "helm install on cluster 'cluster-a' was stopped" in message
        assert "serviceaccounts" in message
        assert "denied by this server's policy" in message
        assert not await exists(cluster_a, "ServiceAccount", f"{release}-sa")
    finally:  # helm may have recorded a failed release: remove its records and objects
        async with cluster_a.admin_client() as admin:
            core = k8s.CoreV1Api(admin)
            for record in await release_records(cluster_a, release):
                await core.delete_namespaced_secret(record, NS)
            if await exists(cluster_a, "ConfigMap", f"{release}-cm"):
                await core.delete_namespaced_config_map(f"{release}-cm", NS)


async def test_api_guard_forwards_allowed_calls_and_refuses_the_rest(
    backend: Any, tokens: Tokens, workloads: Any
) -> None:
    """The guard on its own, with a real client: an allowed call reaches the cluster (the
    caller's token decides: without one the API server refuses system:anonymous), a denied kind
    gets the guard's 403 Status, and paths the check could read differently from the API server
    are refused."""
    api = await backend.backend.clusters.bind(None, tokens.admin)
    client = api.cluster.client
    async with ApiGuard(client.session()) as guard:
        tls = ssl.create_default_context(cafile=str(guard.ca_file))
        auth = {"Authorization": f"Bearer {tokens.admin}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:

            async def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
                url = URL(guard.url + path, encoded=True)  # sent as written, not normalized
                async with http.get(url, headers=headers) as resp:
                    return resp.status, await resp.json(content_type=None)

            allowed = await get(f"/api/v1/namespaces/{NS}/configmaps", auth)
            anonymous = await get(f"/api/v1/namespaces/{NS}/configmaps", {})
            denied = await get("/apis/rbac.authorization.k8s.io/v1/clusterroles", auth)
            dotted = await get(f"/api/v1/namespaces/{NS}/pods/../../serviceaccounts", auth)
            encoded = await get("/apis/rbac.authorization.k8s.io/v1/cluster%72oles", auth)
    assert allowed[0] == 200
    assert allowed[1]["kind"] == "ConfigMapList"
    assert anonymous[0] == 403  # the API server's own answer to no token
    assert "system:anonymous" in anonymous[1]["message"]
    assert denied[0] == 403
    assert denied[1]["reason"] == "Forbidden"
    assert "refused by the MCP backend" in denied[1]["message"]
    assert "denied by this server's policy" in denied[1]["message"]
    assert guard.refused == [denied[1]["message"].split(": ", 1)[1]]
    assert dotted[0] == encoded[0] == 400


@pytest.mark.parametrize("hook", [False, True])
async def test_the_api_guard_stops_a_service_account_token_secret_whatever_was_checked(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    hook: bool,
) -> None:
    """With every earlier check passed (Secret approved, as a ``rand`` template could make the
    dry run render an Opaque Secret), the guard still refuses the request creating it."""
    release = f"hgt{int(hook)}"
    template = TOKEN_SECRET.replace("NAME", "{{ .Release.Name }}")
    if hook:
        template = template.replace(
            "  annotations: {", '  annotations: {"helm.sh/hook": pre-install, '
        )
    chart = write_chart(charts_dir / tmp_path.name, {"templates/token.yaml": template})
    try:
        async with install_of(backend, tokens.admin, chart, release) as install:
            with pytest.raises(AccessDenied) as refused:
                await install({("", "ConfigMap"), ("", "Secret")})
        message = refused.value.message
        assert "helm install on cluster 'cluster-a' was stopped" in message
        assert "a Secret of type kubernetes.io/service-account-token" in message
        assert not await exists(cluster_a, "Secret", f"{release}-token")
    finally:
        async with cluster_a.admin_client() as admin:
            core = k8s.CoreV1Api(admin)
            for record in await release_records(cluster_a, release):
                await core.delete_namespaced_secret(record, NS)
            if await exists(cluster_a, "ConfigMap", f"{release}-cm"):
                await core.delete_namespaced_config_map(f"{release}-cm", NS)


async def test_api_guard_refuses_a_service_account_token_secret_and_forwards_other_secrets(
    backend: Any, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    api = await backend.backend.clusters.bind(None, tokens.admin)
    client = api.cluster.client
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "guard-token",
            "annotations": {"kubernetes.io/service-account.name": "mcpb-admin"},
        },
        "type": "kubernetes.io/service-account-token",
    }
    opaque = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "guard-opaque"}}
    try:
        async with ApiGuard(client.session()) as guard:
            tls = ssl.create_default_context(cafile=str(guard.ca_file))
            auth = {"Authorization": f"Bearer {tokens.admin}"}
            url = f"{guard.url}/api/v1/namespaces/{NS}/secrets"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
                async with http.post(url, json=secret, headers=auth) as resp:
                    refused = resp.status, await resp.json(content_type=None)
                async with http.post(url, json=opaque, headers=auth) as resp:
                    forwarded = resp.status
        assert refused[0] == 403
        assert "refused by the MCP backend" in refused[1]["message"]
        assert "makes the cluster issue a token of a ServiceAccount" in refused[1]["message"]
        assert forwarded == 201
        assert not await exists(cluster_a, "Secret", "guard-token")
        assert await exists(cluster_a, "Secret", "guard-opaque")
    finally:
        async with cluster_a.admin_client() as admin:
            with contextlib.suppress(ApiException):
                await k8s.CoreV1Api(admin).delete_namespaced_secret("guard-opaque", NS)
