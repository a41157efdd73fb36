"""Rollout tools against cluster A: the real controllers (Deployment, StatefulSet, DaemonSet,
ControllerRevision history) with kwok running the pods; success, RBAC refusals with the caller's
own token, and the cluster's objects checked directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend.operations.rollout import RESTARTED_AT
from tests.mcp_backend.conftest import NS, Tokens, text_of, wait_for
from tests.testbed.cluster import Cluster

OLD, NEW = "registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.9"


def _workload(kind: str, name: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [{"name": "main", "image": image}],
                # kwok's fake nodes carry the kwok taint; DaemonSet pods need to tolerate it
                "tolerations": [{"operator": "Exists"}],
                "nodeSelector": {"type": "kwok"},
            },
        },
    }
    if kind != "DaemonSet":
        spec["replicas"] = 2
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


async def _create(cluster: Cluster, body: dict[str, Any]) -> None:
    async with cluster.admin_client() as api:
        apps = k8s.AppsV1Api(api)
        create = {
            "Deployment": apps.create_namespaced_deployment,
            "StatefulSet": apps.create_namespaced_stateful_set,
            "DaemonSet": apps.create_namespaced_daemon_set,
        }[body["kind"]]
        await create(NS, body)


async def _read(cluster: Cluster, kind: str, name: str) -> Any:
    async with cluster.admin_client() as api:
        apps = k8s.AppsV1Api(api)
        read = {
            "Deployment": apps.read_namespaced_deployment,
            "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set,
        }[kind]
        return await read(name, NS)


async def _set_image(cluster: Cluster, kind: str, name: str, image: str, cause: str) -> None:
    patch = {
        "metadata": {"annotations": {"kubernetes.io/change-cause": cause}},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}},
    }
    async with cluster.admin_client() as api:
        apps = k8s.AppsV1Api(api)
        patcher = {
            "Deployment": apps.patch_namespaced_deployment,
            "StatefulSet": apps.patch_namespaced_stateful_set,
            "DaemonSet": apps.patch_namespaced_daemon_set,
        }[kind]
        await patcher(name, NS, patch)


@contextlib.asynccontextmanager
async def _deployed(cluster: Cluster, kind: str, name: str) -> AsyncIterator[None]:
    await _create(cluster, _workload(kind, name, OLD))
    try:
        yield
    finally:
        async with cluster.admin_client() as api:
            apps = k8s.AppsV1Api(api)
            delete = {
                "Deployment": apps.delete_namespaced_deployment,
                "StatefulSet": apps.delete_namespaced_stateful_set,
                "DaemonSet": apps.delete_namespaced_daemon_set,
            }[kind]
            with contextlib.suppress(ApiException):
                await delete(name, NS, propagation_policy="Background")


async def _status(client: Any, kind: str, name: str) -> dict[str, Any]:
    result = await client.call_tool("rollout_status", {"kind": kind, "name": name, "namespace": NS})
    assert not result.is_error, text_of(result)
    data: dict[str, Any] = result.structured_content
    return data


async def _rolled_out(client: Any, kind: str, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        data = await _status(client, kind, name)
        return data if data["done"] else None

    return await wait_for(done, f"{kind} {name} rolled out", within=90)  # type: ignore[no-any-return]


def _image(obj: Any) -> str:
    return str(obj.spec.template.spec.containers[0].image)


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
async def test_rollout_status_history_undo(
    connect: Any, tokens: Tokens, cluster_a: Cluster, kind: str, workloads: dict[str, Any]
) -> None:
    name = f"roll-{kind.lower()}"
    async with (
        _deployed(cluster_a, kind, name),
        connect(tokens.admin) as admin,
        connect(tokens.viewer) as viewer,
    ):
        first = await _rolled_out(viewer, kind, name)
        assert "roll" in first["message"]
        await _set_image(cluster_a, kind, name, NEW, "image to 3.9")
        await _rolled_out(viewer, kind, name)
        history = await viewer.call_tool(
            "rollout_history", {"kind": kind, "name": name, "namespace": NS}
        )
        assert not history.is_error, text_of(history)
        revisions = history.structured_content["revisions"]
        assert [r["revision"] for r in revisions] == [1, 2]
        assert [r["current"] for r in revisions] == [False, True]
        assert revisions[1]["images"] == [NEW]
        assert revisions[0]["images"] == [OLD]
        assert "REVISION" in text_of(history)
        # The viewer (ClusterRole view) may read the rollout but not change it.
        refused = await viewer.call_tool(
            "rollout_undo", {"kind": kind, "name": name, "namespace": NS}
        )
        assert refused.is_error
        assert "403" in text_of(refused)
        assert "mcpb-viewer" in text_of(refused)
        assert "patch" in text_of(refused)
        assert _image(await _read(cluster_a, kind, name)) == NEW
        undone = await admin.call_tool(
            "rollout_undo", {"kind": kind, "name": name, "namespace": NS}
        )
        assert not undone.is_error, text_of(undone)
        assert undone.structured_content["toRevision"] == 1
        assert undone.structured_content["changed"] is True
        assert _image(await _read(cluster_a, kind, name)) == OLD
        await _rolled_out(viewer, kind, name)
        # Undo to revision 1 again: the template already is revision 1's.
        again = await admin.call_tool(
            "rollout_undo", {"kind": kind, "name": name, "namespace": NS, "revision": 2}
        )
        assert not again.is_error, text_of(again)
        assert _image(await _read(cluster_a, kind, name)) == NEW
        missing = await admin.call_tool(
            "rollout_undo", {"kind": kind, "name": name, "namespace": NS, "revision": 99}
        )
        assert missing.is_error
        assert "has no revision 99" in text_of(missing)


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
async def test_rollout_restart(
    connect: Any, tokens: Tokens, cluster_a: Cluster, kind: str, workloads: dict[str, Any]
) -> None:
    name = f"restart-{kind.lower()}"
    async with (
        _deployed(cluster_a, kind, name),
        connect(tokens.admin) as admin,
        connect(tokens.viewer) as viewer,
    ):
        await _rolled_out(viewer, kind, name)
        refused = await viewer.call_tool(
            "rollout_restart", {"kind": kind, "name": name, "namespace": NS}
        )
        assert refused.is_error
        assert "403" in text_of(refused)
        annotations = (await _read(cluster_a, kind, name)).spec.template.metadata.annotations
        assert RESTARTED_AT not in (annotations or {})
        restarted = await admin.call_tool(
            "rollout_restart", {"kind": kind, "name": name, "namespace": NS}
        )
        assert not restarted.is_error, text_of(restarted)
        stamp = restarted.structured_content["restartedAt"]
        obj = await _read(cluster_a, kind, name)
        assert obj.spec.template.metadata.annotations[RESTARTED_AT] == stamp
        await _rolled_out(viewer, kind, name)
        history = await viewer.call_tool(
            "rollout_history", {"kind": kind, "name": name, "namespace": NS}
        )
        assert [r["revision"] for r in history.structured_content["revisions"]] == [1, 2]


async def test_rollout_status_of_a_paused_deployment_and_refusals(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    name = "roll-paused"
    async with _deployed(cluster_a, "Deployment", name):
        async with cluster_a.admin_client() as api:
            await k8s.AppsV1Api(api).patch_namespaced_deployment(
                name, NS, {"spec": {"paused": True}}
            )
        async with connect(tokens.admin) as admin, connect(tokens.ns_reader) as reader:
            restart = await admin.call_tool(
                "rollout_restart", {"kind": "Deployment", "name": name, "namespace": NS}
            )
            # The reader may read pods, not Deployments: its own token is refused.
            status = await reader.call_tool(
                "rollout_status", {"kind": "Deployment", "name": name, "namespace": NS}
            )
            bad_kind = await admin.call_tool(
                "rollout_status", {"kind": "Job", "name": name, "namespace": NS}
            )
    assert restart.is_error
    assert "is paused" in text_of(restart)
    assert status.is_error
    assert "403" in text_of(status)
    assert "mcpb-reader" in text_of(status)
    assert "get deployments.apps" in text_of(status)
    assert bad_kind.is_error


async def test_rollout_status_reports_progress_until_done(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    """A Deployment whose pods can never be scheduled: the status says what it waits for."""
    name = "roll-stuck"
    body = _workload("Deployment", name, OLD)
    body["spec"]["template"]["spec"]["nodeSelector"] = {"type": "no-such-node"}
    await _create(cluster_a, body)
    try:
        async with connect(tokens.viewer) as viewer:

            async def observed() -> dict[str, Any] | None:
                data = await _status(viewer, "Deployment", name)
                return data if "available" in data["message"] else None

            data = await wait_for(observed, "the stuck Deployment's status", within=60)
    finally:
        async with cluster_a.admin_client() as api:
            await k8s.AppsV1Api(api).delete_namespaced_deployment(name, NS)
    assert data["done"] is False
    assert "0 of 2 updated replicas are available" in data["message"]
    assert data["available"] == 0
