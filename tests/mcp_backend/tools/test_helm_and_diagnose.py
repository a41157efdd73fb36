"""Helm tools with a small local chart (the real helm CLI, token via HELM_KUBETOKEN), and the
agent-oriented ``workload_diagnose``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.mcp_backend.conftest import NS, WEB_REPLICAS, Tokens, text_of


async def test_helm_install_list_uninstall(
    connect: Any, tokens: Tokens, tiny_chart: Path, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        installed = await client.call_tool(
            "helm_install",
            {
                "chart": str(tiny_chart),
                "name": "tiny1",
                "namespace": NS,
                "values": {"greeting": "bonjour"},
            },
        )
        assert not installed.is_error, text_of(installed)
        assert installed.structured_content["status"] == "deployed"
        cm = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "tiny1-cm", "namespace": NS},
        )
        assert "bonjour" in text_of(cm)
        listed = await client.call_tool("helm_list", {"namespace": NS})
        assert [r["name"] for r in listed.structured_content["releases"]] == ["tiny1"]
        everywhere = await client.call_tool("helm_list", {"all_namespaces": True})
        assert "tiny1" in text_of(everywhere)
        second = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": "tiny1b", "namespace": NS}
        )
        assert not second.is_error, text_of(second)
        page1 = await client.call_tool("helm_list", {"namespace": NS, "limit": 1})
        page2 = await client.call_tool(
            "helm_list",
            {"namespace": NS, "limit": 1, "continue": page1.structured_content["continue"]},
        )
        names = [r["name"] for p in (page1, page2) for r in p.structured_content["releases"]]
        assert sorted(names) == ["tiny1", "tiny1b"]
        assert "continue" not in page2.structured_content
        await client.call_tool("helm_uninstall", {"name": "tiny1b", "namespace": NS})
        removed = await client.call_tool("helm_uninstall", {"name": "tiny1", "namespace": NS})
        assert not removed.is_error
        assert "uninstalled" in text_of(removed)
        after = await client.call_tool("helm_list", {"namespace": NS})
    assert "No Helm releases" in text_of(after)
    assert tokens.admin not in text_of(installed) + text_of(listed)


async def test_helm_install_of_a_denied_kind_is_refused(
    connect: Any, tokens: Tokens, tiny_chart: Path, workloads: dict[str, Any]
) -> None:
    (tiny_chart / "templates" / "sa.yaml").write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Release.Name }}-sa\n"
    )
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": "tiny3", "namespace": NS}
        )
        listed = await client.call_tool("helm_list", {"namespace": NS})
    assert result.is_error
    assert "ServiceAccount" in text_of(result)
    assert "denied by this server's policy" in text_of(result)
    assert "tiny3" not in text_of(listed)


async def test_helm_install_refused_for_viewer(
    connect: Any, tokens: Tokens, tiny_chart: Path, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": "tiny2", "namespace": NS}
        )
    text = text_of(result)
    assert result.is_error
    assert "forbidden" in text
    assert "mcpb-viewer" in text
    assert tokens.viewer not in text


async def test_workload_diagnose_deployment(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "workload_diagnose", {"kind": "Deployment", "name": "web", "namespace": NS}
        )
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["replicas"]["desired"] == WEB_REPLICAS
    assert {p["name"] for p in data["pods"]} >= set(workloads["web_pods"])
    assert all(p["phase"] == "Running" for p in data["pods"] if p["name"] in workloads["web_pods"])
    assert any(e["reason"] == "ScalingReplicaSet" for e in data["events"])
    assert "## pods" in text_of(result)
    assert "## events" in text_of(result)


async def test_workload_diagnose_pod_shows_owner_chain(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    pod = workloads["web_pods"][0]
    async with connect(tokens.viewer) as client:
        result = await client.call_tool(
            "workload_diagnose", {"kind": "Pod", "name": pod, "namespace": NS}
        )
    owners = result.structured_content["owners"]
    assert [o["kind"] for o in owners] == ["ReplicaSet", "Deployment"]
    assert owners[-1]["name"] == "web"
    assert "owners: ReplicaSet/" in text_of(result)


async def test_workload_diagnose_unschedulable_pod(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    manifest = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stuck, namespace: mcpb}\nspec:\n"
        "  nodeSelector: {no-such-label: 'true'}\n"
        "  containers: [{name: main, image: registry.k8s.io/pause:3.10}]\n"
    )
    async with connect(tokens.admin) as client:
        created = await client.call_tool("resources_create_or_update", {"resource": manifest})
        assert not created.is_error, text_of(created)
        from tests.mcp_backend.conftest import wait_for

        async def diagnosed() -> Any:
            r = await client.call_tool(
                "workload_diagnose", {"kind": "Pod", "name": "stuck", "namespace": NS}
            )
            return (
                r
                if any(e["reason"] == "FailedScheduling" for e in r.structured_content["events"])
                else None
            )

        result = await wait_for(diagnosed, "a FailedScheduling event", within=30, interval=1)
        await client.call_tool("pods_delete", {"name": "stuck", "namespace": NS})
    assert result.structured_content["pods"][0]["phase"] == "Pending"
    assert "FailedScheduling" in text_of(result)


async def test_workload_diagnose_partial_rights_become_notes(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    pod = workloads["web_pods"][0]
    async with connect(tokens.ns_reader) as client:  # may read pods, not events or ReplicaSets
        result = await client.call_tool(
            "workload_diagnose", {"kind": "Pod", "name": pod, "namespace": NS}
        )
        refused = await client.call_tool(
            "workload_diagnose", {"kind": "Deployment", "name": "web", "namespace": NS}
        )
    assert not result.is_error, text_of(result)
    assert "## not available" in text_of(result)
    assert "list events" in text_of(result)
    assert refused.is_error
    assert "deployments.apps" in text_of(refused)


async def test_workload_diagnose_job_and_statefulset(
    connect: Any, tokens: Tokens, kwok_nodes: list[str], workloads: dict[str, Any]
) -> None:
    manifest = (
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once, namespace: mcpb}\nspec:\n"
        "  template:\n    spec:\n      restartPolicy: Never\n"
        "      containers: [{name: main, image: registry.k8s.io/pause:3.10}]\n"
        "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: mcpb}\n"
        "spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n"
        "  template:\n    metadata: {labels: {app: db}}\n"
        "    spec: {containers: [{name: main, image: registry.k8s.io/pause:3.10}]}\n"
    )
    from tests.mcp_backend.conftest import wait_for

    async with connect(tokens.admin) as client:
        applied = await client.call_tool("resources_create_or_update", {"resource": manifest})
        assert not applied.is_error, text_of(applied)

        async def job_done() -> Any:
            r = await client.call_tool(
                "workload_diagnose", {"kind": "Job", "name": "once", "namespace": NS}
            )
            return r if r.structured_content["replicas"].get("succeeded") == 1 else None

        async def sts_ready() -> Any:
            r = await client.call_tool(
                "workload_diagnose", {"kind": "StatefulSet", "name": "db", "namespace": NS}
            )
            return r if r.structured_content["replicas"].get("ready") == 1 else None

        job = await wait_for(job_done, "the Job to succeed on kwok", within=60, interval=1)
        sts = await wait_for(sts_ready, "the StatefulSet pod to be ready", within=60, interval=1)
    assert job.structured_content["pods"][0]["phase"] == "Succeeded"
    assert "Job mcpb/once" in text_of(job)
    assert [p["name"] for p in sts.structured_content["pods"]] == ["db-0"]
    assert any(e["object"] == "StatefulSet/db" for e in sts.structured_content["events"])


async def test_helm_arguments_cannot_become_cli_flags(
    connect: Any, tokens: Tokens, tiny_chart: Path
) -> None:
    attempts = [
        ("helm_install", {"chart": str(tiny_chart), "name": "--post-renderer=/bin/sh"}),
        ("helm_install", {"chart": "--kubeconfig=/etc/passwd", "name": "ok"}),
        ("helm_install", {"chart": str(tiny_chart), "name": "ok", "namespace": "-A"}),
        ("helm_list", {"namespace": "--all-namespaces"}),
        ("helm_uninstall", {"name": "--no-hooks", "namespace": NS}),
    ]
    async with connect(tokens.admin) as client:
        for tool, args in attempts:
            result = await client.call_tool(tool, args)
            assert result.is_error, (tool, args)
            assert "invalid" in text_of(result) or "not a chart" in text_of(result)
