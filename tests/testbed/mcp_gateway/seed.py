"""What the demo and the e2e tests find in clusters A and B: RBAC for the demo users' groups in
namespace ``demo`` and a two-pod Deployment ``web-<cluster>`` there; and the wait until cluster A
accepts the users' tokens and their RoleBinding took effect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.testbed import keycloak as kc
from tests.testbed import process
from tests.testbed.cluster import Cluster

DEMO_NAMESPACE = "demo"
# Demo users of manifests/keycloak (demo-only credentials): all tools / read-only tools.
DEMO_USERS = {"mcp": "mcp", "viewer": "viewer"}
USER_GROUP_ROLES = {"mcp-users": "edit", "viewers": "view"}  # RBAC in `demo` on A and B


async def seed_cluster(cluster: Cluster) -> None:
    """RBAC for the demo users' groups (in namespace ``demo`` only, so that other tests sharing
    the session's clusters keep their assumptions) and a running Deployment there."""
    await cluster.ensure_fake_nodes(2)
    async with cluster.admin_client() as api:
        core, rbac, apps = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api), k8s.AppsV1Api(api)
        meta = k8s.V1ObjectMeta
        await _ignore_conflict(
            core.create_namespace(k8s.V1Namespace(metadata=meta(name=DEMO_NAMESPACE)))
        )
        for group, role in USER_GROUP_ROLES.items():
            binding = k8s.V1RoleBinding(
                metadata=meta(name=f"kmg-demo-{group}"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        kind="Group", name=group, api_group="rbac.authorization.k8s.io"
                    )
                ],
            )
            await _ignore_conflict(rbac.create_namespaced_role_binding(DEMO_NAMESPACE, binding))
        app = f"web-{cluster.name}"
        deployment = k8s.V1Deployment(
            metadata=meta(name=app, labels={"app": app}),
            spec=k8s.V1DeploymentSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels={"app": app}),
                template=k8s.V1PodTemplateSpec(
                    metadata=meta(labels={"app": app}),
                    spec=k8s.V1PodSpec(
                        containers=[
                            k8s.V1Container(name="main", image="registry.k8s.io/pause:3.10")
                        ]
                    ),
                ),
            ),
        )
        await _ignore_conflict(apps.create_namespaced_deployment(DEMO_NAMESPACE, deployment))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pods = await core.list_namespaced_pod(DEMO_NAMESPACE)
            running = [p for p in pods.items if p.status and p.status.phase == "Running"]
            if len(running) >= 2:
                return
            await asyncio.sleep(0.5)
        raise process.ComponentError(
            f"{cluster.name}: the demo Deployment's pods did not run within 60s "
            f"(kwok log: {cluster.log_dir / 'kwok.log'})"
        )


async def _ignore_conflict(call: Awaitable[Any]) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await call
    except ApiException as exc:
        if exc.status != 409:
            raise


async def seed_clusters(clusters: list[Cluster]) -> None:
    await asyncio.gather(*(seed_cluster(c) for c in clusters))


async def wait_users_accepted(stack_kc: kc.Keycloak, cluster_a: Cluster) -> None:
    """Wait until cluster A accepts a user token (it fetches Keycloak's discovery lazily) and the
    demo RoleBinding took effect (the RBAC authorizer learns bindings through an informer)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    token = await asyncio.to_thread(stack_kc.user_token, "mcp", DEMO_USERS["mcp"])
    await cluster_a.wait_token_accepted(token, within=60)
    deadline = time.monotonic() + 30
    async with cluster_a.client_for_token(token) as api:
        while True:
            try:
                await k8s.CoreV1Api(api).list_namespaced_pod(DEMO_NAMESPACE)
                return
            except ApiException as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)
