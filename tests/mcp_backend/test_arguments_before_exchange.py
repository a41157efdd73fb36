"""Arguments are checked before the caller's token is exchanged (issue 15 item 3): a tool call
with invalid arguments on a cluster behind token exchange is refused without any exchange.

The exchange service is the real one of ``test_cross_domain`` (in front of the testbed's
Keycloak); its STS call counter tells whether the backend asked for an exchange."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.gateway_plugins.token_exchange.running import (
    CLUSTER_B_TARGET,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    running_service,
    service_settings,
)
from tests.mcp_backend.conftest import NS_B, cluster_entry, mcp_client, text_of
from tests.testbed.cluster import Cluster

CTX = {"context": "cluster-b"}
INVALID_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("resources_list", {"apiVersion": "v1"}, "argument 'kind' is required"),
    ("resources_list", {"apiVersion": "v1", "kind": "ConfigMap", "limit": 0}, "'limit'"),
    ("resources_get", {"apiVersion": "v1", "kind": "ConfigMap"}, "argument 'name' is required"),
    ("resources_create_or_update", {"resource": "kind: [unclosed"}, "YAML"),
    ("pods_list_in_namespace", {"limit": "ten", "namespace": NS_B}, "'limit'"),
    ("pods_exec", {"name": "p", "namespace": NS_B}, "argument 'command' is required"),
    ("pods_log", {"name": "p", "namespace": NS_B, "tail": -1}, "'tail'"),
    ("pods_log", {"name": "p", "namespace": NS_B, "grep": 5}, "'grep'"),
    ("events_list", {"output": 3}, "'output'"),
    ("rollout_undo", {"kind": "Deployment", "name": "d", "revision": "x"}, "'revision'"),
    ("workload_diagnose", {"kind": "Pod", "name": "p", "log_lines": 0}, "'log_lines'"),
]


async def test_invalid_arguments_are_refused_before_any_token_exchange(
    keycloak: Any, cluster_a: Cluster, cluster_b: Cluster, backend_factory: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "facade.secret"
    secret.write_text(FACADE_CLIENT_SECRET + "\n")
    async with running_service(service_settings(keycloak, tmp_path / "sts")) as sts:
        b_entry = {
            **cluster_entry(cluster_b),
            "domain": "cluster-b",
            "token_exchange": {
                "url": f"{sts.url}/token",
                "audience": CLUSTER_B_TARGET,
                "client_id": FACADE_CLIENT_ID,
                "client_secret_file": str(secret),
            },
        }
        backend = await backend_factory(
            clusters=[cluster_entry(cluster_a, default=True), b_entry],
            disabled_tools=["pods_delete"],  # a backend of its own: a fresh exchanger
        )
        user_token = await keycloak.auser_token("mcp", "mcp")
        async with mcp_client(backend.url, user_token) as client:
            refusals = [
                (await client.call_tool(tool, {**args, **CTX}), expected)
                for tool, args, expected in INVALID_CALLS
            ]
            exchanges_after_invalid = sts.sts_calls()
            valid = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS_B, **CTX}
            await client.call_tool("resources_list", valid)  # its outcome is not the point
            exchanges_after_valid = sts.sts_calls()
    for result, expected in refusals:
        assert result.is_error, text_of(result)
        assert expected in text_of(result)
        assert "token exchange" not in text_of(result)
    assert exchanges_after_invalid == 0
    assert exchanges_after_valid > 0  # the counter sees the exchange a valid call makes
