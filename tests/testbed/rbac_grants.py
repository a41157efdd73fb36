"""RBAC grants the tests and benchmarks give testbed users and service accounts (idempotent:
existing objects kept, or replaced for a service account's own Role/ClusterRole and binding)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.testbed.kube_objects import apply


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


_RULE_FIELDS = {
    "apiGroups": "api_groups",
    "resources": "resources",
    "verbs": "verbs",
    "resourceNames": "resource_names",
    "nonResourceURLs": "non_resource_urls",
}


async def grant_service_account(
    api: k8s.ApiClient,
    *,
    name: str,
    namespace: str,
    rules: Sequence[Mapping[str, Any] | k8s.V1PolicyRule] | None = None,
    cluster_role: str | None = None,
    role: str | None = None,
    cluster_wide: bool = False,
) -> None:
    """Bind ServiceAccount ``namespace/name`` to at most one of ``rules`` (a Role ``name``, or a
    ClusterRole ``<namespace>-<name>`` when ``cluster_wide``, created or replaced),
    ``cluster_role`` or ``role``: a RoleBinding in ``namespace``, or a ClusterRoleBinding when
    ``cluster_wide`` (see :meth:`tests.testbed.cluster.Cluster.service_account_token`)."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    meta = k8s.V1ObjectMeta
    wide_name = f"{namespace}-{name}"  # cluster-scoped objects: unique per account
    role_ref: k8s.V1RoleRef | None = None
    if rules is not None:
        policy = [_policy_rule(r) for r in rules]
        if cluster_wide:
            cr = k8s.V1ClusterRole(metadata=meta(name=wide_name), rules=policy)
            await apply(
                rbac.create_cluster_role(cr),
                lambda: rbac.replace_cluster_role(wide_name, cr),
            )
            role_ref = _role_ref("ClusterRole", wide_name)
        else:
            r = k8s.V1Role(metadata=meta(name=name), rules=policy)
            await apply(
                rbac.create_namespaced_role(namespace, r),
                lambda: rbac.replace_namespaced_role(name, namespace, r),
            )
            role_ref = _role_ref("Role", name)
    elif cluster_role is not None:
        role_ref = _role_ref("ClusterRole", cluster_role)
    elif role is not None:
        role_ref = _role_ref("Role", role)
    if role_ref is None:
        return
    subjects = [k8s.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)]
    if cluster_wide:
        crb = k8s.V1ClusterRoleBinding(
            metadata=meta(name=wide_name), role_ref=role_ref, subjects=subjects
        )
        await apply(
            rbac.create_cluster_role_binding(crb),
            lambda: rbac.replace_cluster_role_binding(wide_name, crb),
        )
    else:
        rb = k8s.V1RoleBinding(metadata=meta(name=name), role_ref=role_ref, subjects=subjects)
        await apply(
            rbac.create_namespaced_role_binding(namespace, rb),
            lambda: rbac.replace_namespaced_role_binding(name, namespace, rb),
        )


def _policy_rule(rule: Mapping[str, Any] | k8s.V1PolicyRule) -> k8s.V1PolicyRule:
    if isinstance(rule, k8s.V1PolicyRule):
        return rule
    unknown = set(rule) - set(_RULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown PolicyRule fields {sorted(unknown)}; use {sorted(_RULE_FIELDS)}")
    return k8s.V1PolicyRule(**{_RULE_FIELDS[k]: list(v) for k, v in rule.items()})


def _role_ref(kind: str, name: str) -> k8s.V1RoleRef:
    return k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind=kind, name=name)
