"""``resources_create_or_update`` with ``dryRun: true`` against cluster A: the API server's own
dry run (admission, defaulting, validation), the diff against the live object, nothing stored,
RBAC refusals with the caller's token, Secret values never shown, denied kinds refused."""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.mcp_backend.conftest import NS, Tokens, text_of
from tests.testbed.cluster import Cluster


def _configmap(name: str, data: dict[str, str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS},
            "data": data,
        }
    )


async def _configmap_data(cluster: Cluster, name: str) -> dict[str, str] | None:
    async with cluster.admin_client() as api:
        try:
            cm = await k8s.CoreV1Api(api).read_namespaced_config_map(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return dict(cm.data or {})


def _result_documents(text: str) -> Any:
    return yaml.safe_load(text.split("# the objects as the API server would store them\n", 1)[1])


async def test_dry_run_update_shows_the_diff_and_changes_nothing(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    before = await _configmap_data(cluster_a, "settings")
    assert before == {"mode": "fast"}
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "resources_create_or_update",
            {"resource": _configmap("settings", {"mode": "slow", "extra": "1"}), "dryRun": True},
        )
    text = text_of(result)
    assert not result.is_error, text
    assert "nothing was changed" in text
    assert "## ConfigMap mcpb/settings would change" in text
    assert "-  mode: fast\n" in text
    assert "+  mode: slow\n" in text
    assert '+  extra: "1"\n' in text
    assert "managedFields" not in text
    assert result.structured_content["objects"][0]["action"] == "update"
    assert _result_documents(text)["data"] == {"mode": "slow", "extra": "1"}
    assert await _configmap_data(cluster_a, "settings") == before


async def test_dry_run_create_returns_the_servers_defaults(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "dry-new", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "dry-new"}},
            "template": {
                "metadata": {"labels": {"app": "dry-new"}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    manifest = yaml.safe_dump(deployment) + "---\n" + _configmap("dry-new-cm", {"a": "b"})
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "resources_create_or_update", {"resource": manifest, "dryRun": True}
        )
    text = text_of(result)
    assert not result.is_error, text
    actions = [(o["kind"], o["action"]) for o in result.structured_content["objects"]]
    assert actions == [("Deployment", "create"), ("ConfigMap", "create")]
    assert "--- /dev/null" in text
    stored = _result_documents(text)
    # Defaults only the API server adds: the dry run went through it.
    assert stored[0]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert stored[0]["spec"]["progressDeadlineSeconds"] == 600
    assert stored[0]["spec"]["replicas"] == 1
    assert "+  progressDeadlineSeconds: 600\n" in text
    async with cluster_a.admin_client() as api:
        try:
            await k8s.AppsV1Api(api).read_namespaced_deployment("dry-new", NS)
            created = True
        except ApiException as exc:
            created = exc.status != 404
    assert not created
    assert await _configmap_data(cluster_a, "dry-new-cm") is None


async def test_dry_run_of_the_live_state_is_unchanged_and_invalid_input_fails(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        same = await client.call_tool(
            "resources_create_or_update",
            {"resource": _configmap("settings", {"mode": "fast"}), "dryRun": True},
        )
        invalid = await client.call_tool(
            "resources_create_or_update",
            {"resource": _configmap("Not_A_Valid_Name", {"a": "b"}), "dryRun": True},
        )
    assert not same.is_error, text_of(same)
    assert same.structured_content["objects"][0]["action"] == "unchanged"
    assert "is unchanged" in text_of(same)
    assert invalid.is_error
    assert "dry run of object 1 (ConfigMap 'Not_A_Valid_Name') failed" in text_of(invalid)
    assert "nothing was changed" in text_of(invalid)


async def test_dry_run_needs_the_callers_write_permission(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "resources_create_or_update",
            {"resource": _configmap("settings", {"mode": "slow"}), "dryRun": True},
        )
    text = text_of(result)
    assert result.is_error
    assert "403" in text
    assert "mcpb-viewer" in text
    assert "patch configmaps" in text
    assert await _configmap_data(cluster_a, "settings") == {"mode": "fast"}


async def test_dry_run_never_shows_secret_values_and_refuses_denied_kinds(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-creds", "namespace": NS},
        "stringData": {"password": "new-secret-value-42", "user": "app"},
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dry-sa"}}
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "resources_create_or_update", {"resource": yaml.safe_dump(secret), "dryRun": True}
        )
        denied = await client.call_tool(
            "resources_create_or_update", {"resource": yaml.safe_dump(account), "dryRun": True}
        )
    text = text_of(result)
    assert not result.is_error, text
    assert "new-secret-value-42" not in text
    assert "hunter2-very-secret" not in text
    assert 'password: "***"' in text
    assert "Secret values are redacted on both sides" in text
    assert denied.is_error
    assert "ServiceAccount" in text_of(denied)
    assert "denied by this server's policy" in text_of(denied)
