"""Generic resource tools on cluster A: any kind via discovery, apply, delete, scale, denial,
redaction, clear errors (unknown kind, bad YAML)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.mcp_backend.conftest import NS, WEB_REPLICAS, Tokens, text_of

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""


async def test_resources_list_deployments_table(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "resources_list", {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS}
        )
    text = text_of(result)
    assert not result.is_error, text
    assert text.split()[:2] == ["NAME", "READY"]
    (web,) = [line.split() for line in text.splitlines() if line.startswith("web ")]
    assert web[1] == f"{WEB_REPLICAS}/{WEB_REPLICAS}"


async def test_resources_get_configmap_yaml(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": NS},
        )
    obj = yaml.safe_load(text_of(result))
    assert obj["data"] == {"mode": "fast"}
    assert "managedFields" not in obj["metadata"]


async def test_secret_values_are_redacted_everywhere(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.ns_reader) as client:
        got = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "Secret", "name": "db-creds", "namespace": NS},
        )
        listed = await client.call_tool(
            "resources_list",
            {"apiVersion": "v1", "kind": "Secret", "namespace": NS, "output": "yaml"},
        )
        table = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "Secret", "namespace": NS}
        )
    for result in (got, listed, table):
        assert not result.is_error, text_of(result)
        assert "hunter2" not in text_of(result)
        assert "aHVudGVyM" not in text_of(result)  # base64 of the value
    assert yaml.safe_load(text_of(got))["data"] == {"password": "***", "user": "***"}
    (item,) = [i for i in yaml.safe_load(text_of(listed)) if i["metadata"]["name"] == "db-creds"]
    assert item["data"] == {"password": "***", "user": "***"}


async def test_denied_kinds_are_denied_in_every_tool(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        listed = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "ServiceAccount"}
        )
        got = await client.call_tool(
            "resources_get",
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "view"},
        )
        applied = await client.call_tool(
            "resources_create_or_update",
            {
                "resource": (
                    "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
                    "metadata: {name: sneaky}\nroleRef: {apiGroup: rbac.authorization.k8s.io, "
                    "kind: ClusterRole, name: cluster-admin}\nsubjects: []\n"
                )
            },
        )
    for result in (listed, got, applied):
        assert result.is_error
        assert "denied by this server's policy" in text_of(result)
    assert "ServiceAccount" in text_of(listed)


async def test_create_or_update_applies_and_updates(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: mcpb\n"
        "data:\n  version: '1'\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n"
        "  name: applied-2\n"
        "  namespace: mcpb\ndata: {}\n"
    )
    async with connect(tokens.admin) as client:
        first = await client.call_tool("resources_create_or_update", {"resource": manifest})
        assert not first.is_error, text_of(first)
        assert [a["name"] for a in first.structured_content["applied"]] == ["applied", "applied-2"]
        second = await client.call_tool(
            "resources_create_or_update",
            {
                "resource": '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": '
                '"applied", "namespace": "mcpb"}, "data": {"version": "2"}}'
            },
        )
        assert not second.is_error, text_of(second)
        got = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "applied", "namespace": NS},
        )
        assert yaml.safe_load(text_of(got))["data"] == {"version": "2"}
        deleted = await client.call_tool(
            "resources_delete",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "applied",
                "namespace": NS,
                "gracePeriodSeconds": 0,
            },
        )
        assert not deleted.is_error
        assert "deleted" in text_of(deleted)
        gone = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "applied", "namespace": NS},
        )
        assert gone.is_error
        assert "not found" in text_of(gone)


async def test_create_or_update_refused_for_viewer(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "resources_create_or_update",
            {
                "resource": "apiVersion: v1\nkind: ConfigMap\n"
                "metadata: {name: nope, namespace: mcpb}\n"
            },
        )
    assert result.is_error
    assert "patch configmaps" in text_of(result)
    assert "403" in text_of(result)


async def test_bad_yaml_names_line_and_column(connect: Any, tokens: Tokens) -> None:
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "resources_create_or_update",
            {"resource": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n"},
        )
    assert result.is_error
    assert "line 5, column 1" in text_of(result) or "line 4" in text_of(result)


async def test_unknown_kind_suggests_near_matches(connect: Any, tokens: Tokens) -> None:
    async with connect(tokens.viewer) as client:
        typo = await client.call_tool(
            "resources_list", {"apiVersion": "apps/v1", "kind": "Deploymnet"}
        )
        wrong_group = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "Deployment"}
        )
    assert typo.is_error
    assert "Did you mean: apps/v1 Deployment;" in text_of(typo)
    assert wrong_group.is_error
    assert "apps/v1" in text_of(wrong_group)


async def test_crd_kinds_are_discovered(
    connect: Any, tokens: Tokens, backend: Any, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        crd = await client.call_tool("resources_create_or_update", {"resource": CRD})
        assert not crd.is_error, text_of(crd)
        backend.backend.clusters.get("cluster-a").discovery.invalidate()

        async def widget_created() -> Any:
            result = await client.call_tool(
                "resources_create_or_update",
                {
                    "resource": "apiVersion: example.com/v1\nkind: Widget\n"
                    "metadata: {name: w1, namespace: mcpb}\nspec: {size: 3}\n"
                },
            )
            if result.is_error:
                backend.backend.clusters.get("cluster-a").discovery.invalidate()
            return not result.is_error

        from tests.mcp_backend.conftest import wait_for

        await wait_for(widget_created, "the Widget CRD to be served", within=30, interval=1)
        listed = await client.call_tool(
            "resources_list", {"apiVersion": "example.com/v1", "kind": "Widget", "namespace": NS}
        )
    assert not listed.is_error
    assert "w1" in text_of(listed)


async def test_resources_scale_reads_and_sets(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    args = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": NS}
    async with connect(tokens.admin) as client:
        read = await client.call_tool("resources_scale", args)
        assert not read.is_error, text_of(read)
        assert read.structured_content["replicas"] == WEB_REPLICAS
        scaled = await client.call_tool("resources_scale", {**args, "scale": WEB_REPLICAS + 1})
        assert scaled.structured_content["replicas"] == WEB_REPLICAS + 1
        back = await client.call_tool("resources_scale", {**args, "scale": WEB_REPLICAS})
        assert back.structured_content["replicas"] == WEB_REPLICAS
    async with connect(tokens.viewer) as client:
        refused = await client.call_tool("resources_scale", {**args, "scale": 5})
    assert refused.is_error
    assert "deployments.apps/scale" in text_of(refused)
