"""Day-2 Helm tools (status, history, upgrade, rollback) with the real helm CLI against cluster A:
the release's objects checked directly, RBAC refusals with the caller's own token, denied kinds
refused before anything changes (the current release, the new render, the rollback target), and
the API guard in the path of an upgrade."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend.errors import AccessDenied
from mcp_backend.helm.runner import ChartSource
from mcp_backend.tools.base import ToolContext
from mcp_backend.tools.helm import fetch_chart, install_checked
from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of
from tests.testbed.cluster import Cluster

SA = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Release.Name }}-sa\n"


async def _greeting(cluster: Cluster, release: str) -> str | None:
    async with cluster.admin_client() as api:
        try:
            cm = await k8s.CoreV1Api(api).read_namespaced_config_map(f"{release}-cm", NS)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return str((cm.data or {}).get("greeting"))


async def _service_account_exists(cluster: Cluster, name: str) -> bool:
    async with cluster.admin_client() as api:
        try:
            await k8s.CoreV1Api(api).read_namespaced_service_account(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
    return True


def _bump(chart: Path, version: str) -> None:
    text = (chart / "Chart.yaml").read_text()
    (chart / "Chart.yaml").write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", text))


async def test_status_upgrade_history_rollback(
    connect: Any, tokens: Tokens, tiny_chart: Path, cluster_a: Cluster, workloads: Any
) -> None:
    release = "hday2"
    async with connect(tokens.admin) as client:
        installed = await client.call_tool(
            "helm_install",
            {
                "chart": str(tiny_chart),
                "name": release,
                "namespace": NS,
                "values": {"greeting": "v1"},
            },
        )
        assert not installed.is_error, text_of(installed)
        try:
            status = await client.call_tool("helm_status", {"name": release, "namespace": NS})
            assert not status.is_error, text_of(status)
            data = status.structured_content
            assert (data["revision"], data["status"], data["chart"]) == (
                1,
                "deployed",
                "tiny-0.1.0",
            )
            assert data["objects"] == [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": f"{release}-cm"}
            ]
            assert "STATUS: deployed" in text_of(status)
            assert "v1" not in text_of(status).replace("apiVersion", "")  # values not shown

            _bump(tiny_chart, "0.2.0")
            upgraded = await client.call_tool(
                "helm_upgrade",
                {
                    "name": release,
                    "chart": str(tiny_chart),
                    "namespace": NS,
                    "values": {"greeting": "v2"},
                },
            )
            assert not upgraded.is_error, text_of(upgraded)
            assert upgraded.structured_content["revision"] == 2
            assert upgraded.structured_content["chart"] == "tiny-0.2.0"
            assert upgraded.structured_content["previousRevision"] == 1
            assert await _greeting(cluster_a, release) == "v2"
            # No values: the release keeps its current ones.
            kept = await client.call_tool(
                "helm_upgrade", {"name": release, "chart": str(tiny_chart), "namespace": NS}
            )
            assert not kept.is_error, text_of(kept)
            assert await _greeting(cluster_a, release) == "v2"

            history = await client.call_tool("helm_history", {"name": release, "namespace": NS})
            assert not history.is_error, text_of(history)
            revisions = history.structured_content["revisions"]
            assert [r["revision"] for r in revisions] == [1, 2, 3]
            assert [r["chart"] for r in revisions] == ["tiny-0.1.0", "tiny-0.2.0", "tiny-0.2.0"]
            assert revisions[-1]["status"] == "deployed"
            last_two = await client.call_tool(
                "helm_history", {"name": release, "namespace": NS, "max": 2}
            )
            assert [r["revision"] for r in last_two.structured_content["revisions"]] == [2, 3]

            back = await client.call_tool(
                "helm_rollback", {"name": release, "namespace": NS, "revision": 1}
            )
            assert not back.is_error, text_of(back)
            assert back.structured_content["rolledBackTo"] == 1
            assert back.structured_content["revision"] == 4
            assert back.structured_content["chart"] == "tiny-0.1.0"
            assert await _greeting(cluster_a, release) == "v1"
            previous = await client.call_tool("helm_rollback", {"name": release, "namespace": NS})
            assert not previous.is_error, text_of(previous)
            assert previous.structured_content["rolledBackTo"] == 3
            assert await _greeting(cluster_a, release) == "v2"
            old = await client.call_tool(
                "helm_status", {"name": release, "namespace": NS, "revision": 1}
            )
            assert old.structured_content["status"] == "superseded"
            missing = await client.call_tool("helm_status", {"name": "no-such", "namespace": NS})
            assert missing.is_error
            assert "not found in namespace 'mcpb'" in text_of(missing)
        finally:
            await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
    assert tokens.admin not in text_of(installed) + text_of(upgraded) + text_of(back)


async def test_day2_helm_tools_refused_by_rbac_for_the_caller(
    connect: Any, tokens: Tokens, tiny_chart: Path, cluster_a: Cluster, workloads: Any
) -> None:
    """ClusterRole view reads no Secrets (where helm keeps releases) and writes nothing."""
    release = "hday2rbac"
    async with connect(tokens.admin) as admin, connect(tokens.viewer) as viewer:
        installed = await admin.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": release, "namespace": NS}
        )
        assert not installed.is_error, text_of(installed)
        try:
            calls = {
                "helm_status": {"name": release, "namespace": NS},
                "helm_history": {"name": release, "namespace": NS},
                "helm_upgrade": {
                    "name": release,
                    "chart": str(tiny_chart),
                    "namespace": NS,
                    "values": {"greeting": "from-viewer"},
                },
                "helm_rollback": {"name": release, "namespace": NS, "revision": 1},
            }
            for tool, args in calls.items():
                result = await viewer.call_tool(tool, args)
                text = text_of(result)
                assert result.is_error, (tool, text)
                assert "forbidden" in text, (tool, text)
                assert "mcpb-viewer" in text, (tool, text)
                assert tokens.viewer not in text
            assert await _greeting(cluster_a, release) == "hello"
        finally:
            await admin.call_tool("helm_uninstall", {"name": release, "namespace": NS})


async def test_upgrade_and_rollback_refuse_denied_kinds(
    backend_factory: Any,
    connect: Any,
    tokens: Tokens,
    tiny_chart: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    release = "hday2deny"
    permissive = await backend_factory(denied_kinds=[])
    async with connect(tokens.admin) as client, mcp_client(permissive.url, tokens.admin) as admin:
        installed = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": release, "namespace": NS}
        )
        assert not installed.is_error, text_of(installed)
        try:
            # 1. The new chart would create a ServiceAccount: refused after the dry run.
            (tiny_chart / "templates" / "sa.yaml").write_text(SA)
            _bump(tiny_chart, "0.2.0")
            refused = await client.call_tool(
                "helm_upgrade", {"name": release, "chart": str(tiny_chart), "namespace": NS}
            )
            assert refused.is_error
            # Refused by the dry run's own reads (the API guard: helm looks the new object up)
            # or by the check of its render, whichever comes first: nothing changes.
            assert "nothing was changed" in text_of(refused)
            assert "ServiceAccount" in text_of(refused)
            assert "denied by this server's policy" in text_of(refused)
            assert not await _service_account_exists(cluster_a, f"{release}-sa")
            # A hook is not looked up by the dry run: the check of the render refuses it.
            hook = SA.replace(
                "metadata:\n", 'metadata:\n  annotations: {"helm.sh/hook": pre-upgrade}\n'
            )
            (tiny_chart / "templates" / "sa.yaml").write_text(hook)
            hooked = await client.call_tool(
                "helm_upgrade", {"name": release, "chart": str(tiny_chart), "namespace": NS}
            )
            assert hooked.is_error
            assert "helm_upgrade refused, nothing was changed: the chart creates" in text_of(hooked)
            assert "ServiceAccount (core)" in text_of(hooked)
            (tiny_chart / "templates" / "sa.yaml").write_text(SA)
            history = await client.call_tool("helm_history", {"name": release, "namespace": NS})
            assert [r["revision"] for r in history.structured_content["revisions"]] == [1]

            # 2. Upgraded through a backend that denies nothing (as another tool could have):
            # now the current release holds a ServiceAccount.
            done = await admin.call_tool(
                "helm_upgrade", {"name": release, "chart": str(tiny_chart), "namespace": NS}
            )
            assert not done.is_error, text_of(done)
            assert await _service_account_exists(cluster_a, f"{release}-sa")
            (tiny_chart / "templates" / "sa.yaml").unlink()
            _bump(tiny_chart, "0.3.0")
            again = await client.call_tool(
                "helm_upgrade", {"name": release, "chart": str(tiny_chart), "namespace": NS}
            )
            assert again.is_error
            assert "the current release (which it would change or delete) holds" in text_of(again)
            back = await client.call_tool(
                "helm_rollback", {"name": release, "namespace": NS, "revision": 1}
            )
            assert back.is_error
            assert "current release" in text_of(back)
            assert await _service_account_exists(cluster_a, f"{release}-sa")

            # 3. Leave the ServiceAccount behind (permissive rollback to 1), then a rollback to
            # revision 2, which holds it, is refused for what it would re-create.
            restored = await admin.call_tool(
                "helm_rollback", {"name": release, "namespace": NS, "revision": 1}
            )
            assert not restored.is_error, text_of(restored)
            assert not await _service_account_exists(cluster_a, f"{release}-sa")
            to_two = await client.call_tool(
                "helm_rollback", {"name": release, "namespace": NS, "revision": 2}
            )
            assert to_two.is_error
            assert "revision 2 (its objects and rollback hooks) holds" in text_of(to_two)
            assert "denied by this server's policy" in text_of(to_two)
            assert not await _service_account_exists(cluster_a, f"{release}-sa")
        finally:
            await admin.call_tool("helm_uninstall", {"name": release, "namespace": NS})


async def test_upgrade_takes_charts_only_from_allowed_sources(
    connect: Any, tokens: Tokens, workloads: Any
) -> None:
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_upgrade", {"name": "any", "chart": "/etc/charts/x", "namespace": NS}
        )
        flag = await client.call_tool(
            "helm_upgrade", {"name": "--install", "chart": "repo/chart", "namespace": NS}
        )
    assert result.is_error
    assert "local path, which this server does not allow" in text_of(result)
    assert flag.is_error
    assert "release name '--install' is invalid" in text_of(flag)


async def test_the_api_guard_stops_an_upgrade_on_a_denied_kind(
    backend: Any, connect: Any, tokens: Tokens, tiny_chart: Path, cluster_a: Cluster, workloads: Any
) -> None:
    """The upgrade's last step with every earlier check fooled (the ServiceAccount counted as
    approved, as a ``rand`` template could make the dry run believe): helm still reaches the
    cluster only through the API guard, which refuses the ServiceAccount."""
    release = "hday2guard"
    async with connect(tokens.admin) as client:
        installed = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": release, "namespace": NS}
        )
        assert not installed.is_error, text_of(installed)
        try:
            (tiny_chart / "templates" / "sa.yaml").write_text(SA)
            handlers = backend.backend.handlers
            ctx = ToolContext(
                settings=handlers.settings,
                clusters=handlers.clusters,
                helm=handlers.helm,
                token=tokens.admin,
                args={},
            )
            api = await ctx.api()
            with ctx.helm.workdir() as home:
                archive = await fetch_chart(
                    ctx, api, ChartSource(str(tiny_chart), local=True), home
                )
                args = ["upgrade", release, str(archive), "--namespace", NS, "-o", "json"]
                approved = {("", "ConfigMap"), ("", "ServiceAccount")}
                with pytest.raises(AccessDenied) as refused:
                    await install_checked(ctx, api, args, approved, {}, home, tool="helm_upgrade")
            assert "helm upgrade on cluster 'cluster-a' was stopped" in refused.value.message
            assert "serviceaccounts" in refused.value.message
            assert not await _service_account_exists(cluster_a, f"{release}-sa")
        finally:
            await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
