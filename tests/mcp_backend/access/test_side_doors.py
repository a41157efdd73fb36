"""Denied kinds cannot be reached through side doors (issue 14, item 4), replayed against the
real API server of cluster A with a cluster-admin token (RBAC allows everything, so only the
backend's own policy stands in the way):

* a Secret of type ``kubernetes.io/service-account-token`` makes the cluster's token controller
  write a non-expiring token of the ServiceAccount it names into the Secret: with ServiceAccount
  denied, creating one is refused, in every form a manifest can take;
* a manifest of several documents is checked whole before anything is applied: a denied (or
  unknown, or misnamed) object later in it leaves the earlier ones unapplied.

The helm side (a chart creating such a Secret) is in ``test_helm_safety.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.mcp_backend.conftest import NS, RunningBackend, Tokens, mcp_client, text_of
from tests.testbed.cluster import Cluster

TOKEN_TYPE = "kubernetes.io/service-account-token"
VICTIM = "mcpb-admin"  # the ServiceAccount whose token the attack wants (cluster-admin on A)


def _token_secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"kubernetes.io/service-account.name": VICTIM},
        },
        "type": TOKEN_TYPE,
    }


def _yaml(name: str) -> str:
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\n"
        f"  annotations:\n    kubernetes.io/service-account.name: {VICTIM}\n"
        f"type: {TOKEN_TYPE}\n"
    )


# case -> (manifest for the secret named NAME, ConfigMap applied before it or None)
FORMS = {
    "YAML": (lambda name: _yaml(name), None),
    "JSON": (lambda name: json.dumps(_token_secret(name)), None),
    "item of a List": (
        lambda name: json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [_token_secret(name)]}
        ),
        None,
    ),
    "type given twice, the token type last": (
        lambda name: _yaml(name).replace("type: ", "type: Opaque\ntype: ", 1),
        None,
    ),
    "after a ConfigMap": (
        lambda name: (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-cm, namespace: "
            f"default}}\n---\n" + _yaml(name)
        ),
        "cm",
    ),
}


async def _read(cluster: Cluster, kind: str, name: str, namespace: str = "default") -> Any:
    async with cluster.admin_client() as api:
        core = k8s.CoreV1Api(api)
        try:
            if kind == "Secret":
                return await core.read_namespaced_secret(name, namespace)
            return await core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


async def _delete(cluster: Cluster, kind: str, name: str, namespace: str = "default") -> None:
    async with cluster.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            if kind == "Secret":
                await core.delete_namespaced_secret(name, namespace)
            else:
                await core.delete_namespaced_config_map(name, namespace)


@pytest.mark.parametrize("case", list(FORMS))
async def test_a_service_account_token_secret_is_refused_in_every_form(
    backend: RunningBackend, tokens: Tokens, cluster_a: Cluster, workloads: Any, case: str
) -> None:
    name = f"side-door-{list(FORMS).index(case)}"
    manifest, before = FORMS[case]
    try:
        async with mcp_client(backend.url, tokens.admin) as client:
            result = await client.call_tool(
                "resources_create_or_update", {"resource": manifest(name)}
            )
        text = text_of(result)
        assert await _read(cluster_a, "Secret", name) is None, text
        if before:
            assert await _read(cluster_a, "ConfigMap", f"{name}-{before}") is None
        assert result.is_error, text
        assert text.startswith("nothing was applied: object ")
        assert f"a Secret of type {TOKEN_TYPE} makes the cluster issue a token" in text
        assert "kind ServiceAccount is denied by this server's policy" in text
    finally:
        await _delete(cluster_a, "Secret", name)
        await _delete(cluster_a, "ConfigMap", f"{name}-cm")


async def test_the_side_door_is_real_and_open_when_service_accounts_are_allowed(
    backend_factory: Any, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    """The control: with ServiceAccount not denied, the same Secret is created and the cluster
    really writes a token into it (so the refusal above is what stops the attack)."""
    allowing = await backend_factory(
        denied_kinds=[{"group": "rbac.authorization.k8s.io", "kind": "*"}]
    )
    name = "side-door-allowed"
    try:
        async with mcp_client(allowing.url, tokens.admin) as client:
            result = await client.call_tool("resources_create_or_update", {"resource": _yaml(name)})
        assert not result.is_error, text_of(result)
        for _ in range(100):
            secret = await _read(cluster_a, "Secret", name)
            if secret is not None and (secret.data or {}).get("token"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the token controller wrote no token into the Secret")
    finally:
        await _delete(cluster_a, "Secret", name)


# case -> (second document, what the refusal says)
SECOND_DOCUMENTS = {
    "a denied kind": (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n"
        "metadata: {name: escalate, namespace: mcpb}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n"
        "subjects: [{kind: ServiceAccount, name: mcpb-nobody, namespace: default}]\n",
        "denied by this server's policy",
    ),
    "an unknown kind": (
        "apiVersion: v1\nkind: NoSuchKind\nmetadata: {name: x, namespace: mcpb}\n",
        "serves no kind 'NoSuchKind'",
    ),
    "a namespace that is no name": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: a/b}\n",
        "is not a valid Kubernetes object name",
    ),
}


@pytest.mark.parametrize("case", list(SECOND_DOCUMENTS))
async def test_a_manifest_is_checked_whole_before_anything_is_applied(
    backend: RunningBackend, tokens: Tokens, cluster_a: Cluster, workloads: Any, case: str
) -> None:
    """The attack: a ConfigMap, then a RoleBinding; before the fix the answer said 'denied'
    after the ConfigMap had been created."""
    name = f"first-doc-{list(SECOND_DOCUMENTS).index(case)}"
    second, reason = SECOND_DOCUMENTS[case]
    manifest = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {NS}}}\n"
    try:
        async with mcp_client(backend.url, tokens.admin) as client:
            result = await client.call_tool(
                "resources_create_or_update", {"resource": manifest + "---\n" + second}
            )
        text = text_of(result)
        assert await _read(cluster_a, "ConfigMap", name, NS) is None, text
        assert result.is_error, text
        assert text.startswith("nothing was applied: object 2 (")
        assert reason in text
    finally:
        await _delete(cluster_a, "ConfigMap", name, NS)


async def test_a_failure_while_applying_says_what_was_applied(
    backend: RunningBackend, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    """What only the API server can refuse (here an invalid spec) comes after the first objects
    were applied: the error names those, so nothing is lost track of."""
    manifest = (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: applied-first, namespace: {NS}}}\n"
        "---\napiVersion: apps/v1\nkind: Deployment\n"
        f"metadata: {{name: invalid, namespace: {NS}}}\nspec: {{replicas: -1}}\n"
    )
    try:
        async with mcp_client(backend.url, tokens.admin) as client:
            result = await client.call_tool("resources_create_or_update", {"resource": manifest})
        text = text_of(result)
        assert result.is_error, text
        assert text.startswith(
            f"applied object 1 (ConfigMap '{NS}/applied-first'); then object 2 (Deployment "
            f"'{NS}/invalid') failed, the rest was not applied: "
        )
        assert await _read(cluster_a, "ConfigMap", "applied-first", NS) is not None
    finally:
        await _delete(cluster_a, "ConfigMap", "applied-first", NS)
