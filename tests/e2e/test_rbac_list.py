"""End to end: tools/list through the local gateway (real broker/router v0.9.0, Envoy, our token
exchange and policy) with ``rbac_list`` on for server A.

A second stack of the local gateway (``<run>/gateway-rbac-list/``) whose policy service reviews
the user's RBAC on cluster A, with the user's token exchanged at the stack's own token exchange
``/token`` facade (client ``mcp-policy``) for server A's audience, as a deployment would. User
``mcp`` holds every tool role, but on cluster A, in the reviewed namespace, only ClusterRole
``view``. Server B is not configured: its list stays role-derived.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mcp_http import UserTokens, catalogues_by_prefix, tools_per_user
from tests.testbed.cluster import Cluster
from tests.testbed.keycloak import Keycloak
from tests.testbed.mcp_gateway.stack import LocalGateway, _run_async
from tests.testbed.mcp_gateway.start import start_gateway
from tests.testbed.pki import CertificateAuthority
from tests.testbed.rbac_grants import view_only_in

pytestmark = pytest.mark.timeout(600)

NAMESPACE = "rbac-list-e2e"
POLICY_CLIENT = "mcp-policy"  # the policy service's client at the /token facade
POLICY_CLIENT_SECRET = "mcp-policy-facade-secret-test-only"  # test-only credential
WRITE_TOOLS = ("pods_delete", "pods_exec", "pods_run", "resources_create_or_update",
               "resources_delete", "resources_scale", "helm_install")  # fmt: skip
READ_TOOLS = ("pods_list", "pods_get", "pods_log", "resources_get", "resources_list")


async def _view_only(cluster: Cluster) -> None:
    async with cluster.admin_client() as api:
        await view_only_in(api, NAMESPACE, "mcp")


@pytest.fixture(scope="module")
def rbac_gateway(
    testbed_run_dir: Path,
    testbed_ca: CertificateAuthority,
    keycloak: Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
) -> Iterator[LocalGateway]:
    _run_async(_view_only(cluster_a))
    secret = testbed_run_dir / "rbac-list-policy-client.secret"
    secret.write_text(POLICY_CLIENT_SECRET)
    secret.chmod(0o600)

    def rbac_list(ports: Mapping[str, int]) -> dict[str, Any]:
        from tests.testbed.identity_plan import BACKEND_AUDIENCE

        return {
            "rbac_list": {
                "enabled": True,
                "clusters": [
                    {
                        "server": BACKEND_AUDIENCE,
                        "api_server": cluster_a.server,
                        "ca_file": str(cluster_a.ca_file),
                        "namespaces": [NAMESPACE],
                        "token_exchange": {
                            "url": f"http://127.0.0.1:{ports['token-exchange']}/token",
                            "audience": BACKEND_AUDIENCE,
                            "client_id": POLICY_CLIENT,
                            "client_secret_file": str(secret),
                        },
                    }
                ],
            }
        }

    gateway = start_gateway(
        testbed_run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        ca_file=testbed_ca.cert,
        subdir="gateway-rbac-list",
        extra_facade_clients={POLICY_CLIENT: POLICY_CLIENT_SECRET},
        policy_extra=rbac_list,
    )
    try:
        yield gateway
    finally:
        gateway.stop()


async def test_tools_list_through_the_gateway_leaves_out_what_rbac_forbids(
    rbac_gateway: LocalGateway,
) -> None:
    tokens = UserTokens({u: rbac_gateway.user_token(u) for u in ("mcp", "viewer")})
    mcp_tools, viewer_tools = await tools_per_user(rbac_gateway.mcp_url, tokens)
    a, b = rbac_gateway.server_a, rbac_gateway.server_b
    catalogues = catalogues_by_prefix(rbac_gateway)
    assert set(WRITE_TOOLS) <= set(catalogues[a.prefix])  # the roles would list them
    # Server A: view-only on cluster A, so no write tool; the reads stay.
    assert {a.tool(t) for t in READ_TOOLS} <= mcp_tools, sorted(mcp_tools)
    assert not {a.tool(t) for t in WRITE_TOOLS} & mcp_tools, sorted(mcp_tools)
    # Server B has no rbac_list entry: its list is the roles' (every tool for mcp).
    assert {b.tool(t) for t in WRITE_TOOLS} <= mcp_tools
    # viewer has no RBAC in the namespace: none of server A's cluster tools.
    assert not {a.tool(t) for t in READ_TOOLS} & viewer_tools, sorted(viewer_tools)
    assert b.tool("pods_list") in viewer_tools
