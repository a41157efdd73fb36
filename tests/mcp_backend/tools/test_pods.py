"""Pod tools against the real cluster A (kwok pods answer logs and exec), success and refusal."""

from __future__ import annotations

from typing import Any

import yaml

from tests.mcp_backend.conftest import (
    NS,
    NS_B,
    Tokens,
    text_of,
)
from tests.testbed.cluster import (
    FAKE_LOG_LINES,
)


async def test_pods_list_all_namespaces_is_a_compact_table(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("pods_list", {"labelSelector": "app=web"})
    text = text_of(result)
    assert not result.is_error, text
    assert text.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "READY"]
    for pod in workloads["web_pods"]:
        assert pod in text
    assert "managedFields" not in text
    rows = result.structured_content["items"]
    assert {r["Name"] for r in rows} == set(workloads["web_pods"])
    assert all(r["Namespace"] == NS for r in rows)


async def test_pods_list_in_namespace_yaml_has_no_managed_fields(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "pods_list_in_namespace", {"namespace": NS, "output": "yaml"}
        )
    assert not result.is_error, text_of(result)
    items = yaml.safe_load(text_of(result))
    assert {i["metadata"]["name"] for i in items} >= set(workloads["web_pods"])
    assert all(i["kind"] == "Pod" and "managedFields" not in i["metadata"] for i in items)


async def test_pods_list_pages_with_limit_and_continue(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    seen: list[str] = []
    async with connect(tokens.viewer) as client:
        first = await client.call_tool(
            "pods_list_in_namespace", {"namespace": NS, "labelSelector": "app=web", "limit": 1}
        )
        assert not first.is_error, text_of(first)
        token = first.structured_content["continue"]
        assert f'continue="{token}"' in text_of(first)
        seen += [r["Name"] for r in first.structured_content["items"]]
        second = await client.call_tool(
            "pods_list_in_namespace",
            {"namespace": NS, "labelSelector": "app=web", "limit": 1, "continue": token},
        )
        assert not second.is_error, text_of(second)
        seen += [r["Name"] for r in second.structured_content["items"]]
    assert len(seen) == 2
    assert set(seen) == set(workloads["web_pods"])


async def test_pods_list_refused_names_user_verb_and_resource(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.nobody) as client:
        result = await client.call_tool("pods_list", {})
    text = text_of(result)
    assert result.is_error
    assert "system:serviceaccount:default:mcpb-nobody" in text
    assert "list pods" in text
    assert "403" in text
    assert "cluster-a" in text
    assert result.structured_content["verb"] == "list"
    assert result.structured_content["resource"] == "pods"


async def test_namespace_scoped_reader_sees_only_its_namespace(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.ns_reader) as client:
        ok = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
        refused = await client.call_tool("pods_list_in_namespace", {"namespace": "default"})
    assert not ok.is_error
    assert workloads["web_pods"][0] in text_of(ok)
    assert refused.is_error
    assert "namespace 'default'" in text_of(refused)


async def test_pods_get(connect: Any, tokens: Tokens, workloads: dict[str, Any]) -> None:
    pod = workloads["web_pods"][0]
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("pods_get", {"name": pod, "namespace": NS})
        missing = await client.call_tool("pods_get", {"name": "no-such-pod", "namespace": NS})
    obj = yaml.safe_load(text_of(result))
    assert obj["metadata"]["name"] == pod
    assert obj["status"]["phase"] == "Running"
    assert "managedFields" not in obj["metadata"]
    assert missing.is_error
    assert "no-such-pod" in text_of(missing)
    assert "not found" in text_of(missing)


async def test_pods_log_returns_the_tail(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    pod = workloads["web_pods"][0]
    async with connect(tokens.viewer) as client:
        full = await client.call_tool("pods_log", {"name": pod, "namespace": NS})
        tail = await client.call_tool("pods_log", {"name": pod, "namespace": NS, "tail": 1})
    assert not full.is_error, text_of(full)
    for line in FAKE_LOG_LINES:
        assert line in text_of(full)
    assert text_of(tail).strip().endswith(FAKE_LOG_LINES[-1])
    assert FAKE_LOG_LINES[0] not in text_of(tail)


async def test_pods_log_refused_without_pods_log_permission(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.nobody) as client:
        result = await client.call_tool(
            "pods_log", {"name": workloads["web_pods"][0], "namespace": NS}
        )
    assert result.is_error
    assert "pods/log" in text_of(result)
    assert "403" in text_of(result)


async def test_pods_exec_runs_the_command(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    pod = workloads["web_pods"][0]
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "pods_exec", {"name": pod, "namespace": NS, "command": ["echo", "hello-from-exec"]}
        )
        failing = await client.call_tool(
            "pods_exec", {"name": pod, "namespace": NS, "command": ["sh", "-c", "exit 3"]}
        )
    assert not result.is_error, text_of(result)
    assert "hello-from-exec" in text_of(result)
    assert failing.is_error, text_of(failing)
    assert (failing.structured_content or {}).get("exitCode") == 3, text_of(failing)


async def test_pods_exec_refused_for_viewer(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "pods_exec", {"name": workloads["web_pods"][0], "namespace": NS, "command": ["id"]}
        )
    assert result.is_error
    assert "403" in text_of(result)
    assert "mcpb-viewer" in text_of(result)


async def test_pods_run_then_delete(
    connect: Any, tokens: Tokens, kwok_nodes: list[str], workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        run = await client.call_tool(
            "pods_run",
            {
                "image": "registry.k8s.io/pause:3.10",
                "name": "mcpb-run",
                "namespace": NS,
                "port": 8080,
            },
        )
        assert not run.is_error, text_of(run)
        created = yaml.safe_load(text_of(run))
        assert [o["kind"] for o in created] == ["Pod", "Service"]
        got = await client.call_tool("pods_get", {"name": "mcpb-run", "namespace": NS})
        assert not got.is_error
        deleted = await client.call_tool("pods_delete", {"name": "mcpb-run", "namespace": NS})
        assert not deleted.is_error
        assert "deleted" in text_of(deleted)
        await client.call_tool(
            "resources_delete",
            {"apiVersion": "v1", "kind": "Service", "name": "mcpb-run", "namespace": NS},
        )


async def test_pods_delete_refused_for_viewer(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "pods_delete", {"name": workloads["web_pods"][0], "namespace": NS}
        )
    assert result.is_error
    assert "delete pods" in text_of(result)


async def test_pods_top_says_metrics_api_is_absent(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """Cluster B never runs a metrics-server: no metrics.k8s.io there."""
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool("pods_top", {"namespace": NS_B, "context": "cluster-b"})
    assert result.is_error
    assert "metrics API (metrics.k8s.io) not available on cluster 'cluster-b'" in text_of(result)


async def test_missing_required_argument_is_a_clear_tool_error(
    connect: Any, tokens: Tokens
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("pods_get", {"namespace": NS})
    assert result.is_error
    assert "argument 'name' is required" in text_of(result)
