"""``can_i`` against the real API server of cluster A: SelfSubjectAccessReview and
SelfSubjectRulesReview answered for the caller's own token (users with different RBAC), kinds the
backend denies marked, and the answers compared with what the API server says directly."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client as k8s

from tests.mcp_backend.conftest import NS, Tokens, text_of
from tests.testbed.cluster import Cluster


async def _direct_review(cluster: Cluster, token: str, attrs: dict[str, str]) -> bool:
    """The API server's own answer for ``token`` (not through the backend)."""
    async with cluster.client_for_token(token) as api:
        review = await k8s.AuthorizationV1Api(api).create_self_subject_access_review(
            {"spec": {"resourceAttributes": attrs}}
        )
    return bool(review.status.allowed)


async def test_can_i_answers_for_the_callers_own_rbac(
    connect: Any, tokens: Tokens, cluster_a: Cluster, workloads: dict[str, Any]
) -> None:
    checks = {
        # (token, verb, resource, namespace) -> expected
        ("ns_reader", "list", "pods", NS): True,
        ("ns_reader", "list", "pods", "default"): False,
        ("ns_reader", "get", "pods/log", NS): True,
        ("ns_reader", "delete", "pods", NS): False,
        ("viewer", "list", "deployments.apps", NS): True,
        ("viewer", "patch", "deploy", NS): False,  # a short name resolves to deployments.apps
        ("viewer", "get", "secrets", NS): False,  # ClusterRole view holds no Secrets
        ("admin", "delete", "Deployment", NS): True,
        ("nobody", "list", "pods", NS): False,
    }
    for (who, verb, resource, namespace), expected in checks.items():
        token = getattr(tokens, who)
        async with connect(token) as client:
            result = await client.call_tool(
                "can_i", {"verb": verb, "resource": resource, "namespace": namespace}
            )
        text = text_of(result)
        assert not result.is_error, text
        data = result.structured_content
        assert data["allowed"] is expected, (who, verb, resource, namespace, text)
        assert text.startswith("yes:" if expected else "no:"), text
        group = "apps" if resource in ("deployments.apps", "deploy", "Deployment") else ""
        attrs = {"verb": verb, "resource": data["resource"], "namespace": namespace}
        if group:
            attrs["group"] = group
        if data["subresource"]:
            attrs["subresource"] = data["subresource"]
        assert data["group"] == group
        assert await _direct_review(cluster_a, token, attrs) is expected
        assert token not in text


async def test_can_i_marks_kinds_this_server_denies(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """cluster-admin may create ServiceAccounts and Roles, but the backend's default policy
    denies those kinds in every tool: the answer says no, and why."""
    async with connect(tokens.admin) as client:
        sa = await client.call_tool(
            "can_i", {"verb": "create", "resource": "serviceaccounts", "namespace": NS}
        )
        role = await client.call_tool(
            "can_i", {"verb": "create", "resource": "roles.rbac.authorization.k8s.io"}
        )
    for result in (sa, role):
        data = result.structured_content
        assert data["allowedByCluster"] is True, text_of(result)
        assert data["allowed"] is False
        assert "denied by this server's policy" in data["deniedByServer"]
        assert text_of(result).startswith("no:")
        assert "RBAC allows it, but this server refuses it" in text_of(result)
    assert "every namespace / cluster-wide" in text_of(role)


async def test_can_i_lists_the_callers_rules_in_a_namespace(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.ns_reader) as client:
        own = await client.call_tool("can_i", {"namespace": NS})
        other = await client.call_tool("can_i", {"namespace": "default"})
    assert not own.is_error, text_of(own)
    rules = own.structured_content["resourceRules"]
    granted = [r for r in rules if "pods" in (r.get("resources") or [])]
    assert granted, rules
    assert set(granted[0]["verbs"]) == {"get", "list"}
    assert {"pods/log", "secrets"} <= {res for r in granted for res in r["resources"]}
    assert "pods" in text_of(own)
    assert "RESOURCES" in text_of(own).splitlines()[1]
    # Outside its namespace the reader holds only what every authenticated user holds.
    other_resources = {
        res for r in other.structured_content["resourceRules"] for res in r.get("resources") or []
    }
    assert "pods" not in other_resources
    assert "selfsubjectaccessreviews" in other_resources


async def test_can_i_rules_mark_denied_kinds(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin) as client:
        result = await client.call_tool("can_i", {"namespace": NS})
    # cluster-admin's rule is '*' on '*': nothing to mark; the default policy's kinds are known
    assert not result.is_error, text_of(result)
    assert any(
        "*" in (r.get("resources") or []) for r in result.structured_content["resourceRules"]
    )
    async with connect(tokens.viewer) as client:
        viewer = await client.call_tool("can_i", {"namespace": NS})
    # ClusterRole view reads ServiceAccounts: this server denies that kind.
    assert "serviceaccounts" in viewer.structured_content["deniedByServer"]
    assert "serviceaccounts (denied here)" in text_of(viewer)


async def test_can_i_bad_arguments_are_clear_errors(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        half = await client.call_tool("can_i", {"verb": "get"})
        bad_verb = await client.call_tool("can_i", {"verb": "get pods", "resource": "pods"})
        unknown = await client.call_tool("can_i", {"verb": "get", "resource": "gizmos.example"})
    assert half.is_error
    assert "verb and resource together" in text_of(half)
    assert bad_verb.is_error
    assert "not a Kubernetes verb" in text_of(bad_verb)
    # RBAC is asked as written for a resource the cluster does not serve, and says so.
    assert not unknown.is_error, text_of(unknown)
    assert unknown.structured_content["allowed"] is False
    assert "serves no resource 'gizmos'" in text_of(unknown)


async def test_can_i_with_a_token_the_cluster_rejects_is_401(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """B's token means nothing to cluster A: the review fails closed with the 401."""
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool("can_i", {"verb": "get", "resource": "pods/log"})
    assert result.is_error
    assert "401" in text_of(result)
    assert "cluster-a" in text_of(result)
