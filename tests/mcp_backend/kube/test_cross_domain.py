"""A cluster in a foreign identity domain: cluster B trusts only realm ``cluster-b``. The backend
exchanges the caller's realm-``mcp`` token at the real token-exchange service (RFC 8693, HTTP
Basic client auth) before calling B; Keycloak and the service are the testbed's real ones."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.gateway_plugins.token_exchange.running import (
    CLUSTER_B_TARGET,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    REFUSED_TARGET,
    running_service,
    service_settings,
)
from tests.mcp_backend.conftest import NS_B, cluster_entry, mcp_client, text_of, wait_for
from tests.testbed.cluster import Cluster

USER, PASSWORD = "mcp", "mcp"


async def _let_user_view(cluster: Cluster) -> None:
    async with cluster.admin_client() as api:
        with contextlib.suppress(ApiException):
            await k8s.RbacAuthorizationV1Api(api).create_cluster_role_binding(
                {
                    "metadata": {"name": "mcpb-user-mcp-view"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "view",
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}
                    ],
                }
            )


async def test_foreign_domain_cluster_is_reached_with_an_exchanged_token(
    keycloak: Any,
    cluster_a: Cluster,
    cluster_b: Cluster,
    backend_factory: Any,
    workloads: dict[str, Any],
    tmp_path: Path,
) -> None:
    await _let_user_view(cluster_b)
    secret = tmp_path / "facade.secret"
    secret.write_text(FACADE_CLIENT_SECRET + "\n")
    async with running_service(service_settings(keycloak, tmp_path / "sts")) as sts:

        def b_entry(audience: str) -> dict[str, Any]:
            return {
                **cluster_entry(cluster_b),
                "domain": "cluster-b",
                "token_exchange": {
                    "url": f"{sts.url}/token",
                    "audience": audience,
                    "client_id": FACADE_CLIENT_ID,
                    "client_secret_file": str(secret),
                },
            }

        good = await backend_factory(
            clusters=[cluster_entry(cluster_a, default=True), b_entry(CLUSTER_B_TARGET)]
        )
        refused = await backend_factory(
            clusters=[cluster_entry(cluster_a, default=True), b_entry(REFUSED_TARGET)]
        )
        user_token = await keycloak.auser_token(USER, PASSWORD)
        async with mcp_client(good.url, user_token) as client:
            args = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": NS_B,
                "context": "cluster-b",
            }

            async def listed() -> Any:  # B's API server may need a retry to trust Keycloak
                result = await client.call_tool("resources_list", args)
                return result if not result.is_error else None

            result = await wait_for(
                listed, "cluster B to accept the exchanged token", within=40, interval=2
            )
            view = await client.call_tool("configuration_view", {"minified": False})
        async with mcp_client(refused.url, user_token) as client:
            denied = await client.call_tool("resources_list", args)
    assert "only-on-b" in text_of(result)
    b_view = [c for c in view.structured_content["clusters"] if c["name"] == "cluster-b"]
    assert b_view == [
        {
            "name": "cluster-b",
            "server": cluster_b.server,
            "domain": "cluster-b",
            "token_exchange": {"audience": CLUSTER_B_TARGET},
            "tls": "custom CA",
        }
    ]
    assert FACADE_CLIENT_SECRET not in text_of(view)
    assert denied.is_error
    assert "token exchange for cluster 'cluster-b'" in text_of(denied)
    assert "refused" in text_of(denied)
    assert user_token not in text_of(denied)
