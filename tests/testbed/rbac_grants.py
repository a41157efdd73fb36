"""RBAC grants the tests and benchmarks give testbed users (idempotent: existing objects kept)."""

from __future__ import annotations

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException


async def view_only_in(api: k8s.ApiClient, namespace: str, user: str) -> None:
    """Create ``namespace`` and bind ``user`` (a User subject) to ClusterRole ``view`` there."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    binding = k8s.V1RoleBinding(
        metadata=k8s.V1ObjectMeta(name=f"{user}-view"),
        role_ref=k8s.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"
        ),
        subjects=[k8s.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")],
    )
    for create in (
        lambda: core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace))),
        lambda: rbac.create_namespaced_role_binding(namespace, binding),
    ):
        try:
            await create()
        except ApiException as exc:
            if exc.status != 409:  # already there
                raise
