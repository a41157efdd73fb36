"""Safety switches: read-only, disable-destructive, tool allow/deny lists, output cap, and the
opt-in ``access_token`` argument."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of

WRITE_TOOLS = {
    "pods_delete",
    "pods_exec",
    "pods_run",
    "resources_create_or_update",
    "resources_delete",
    "resources_scale",
    "helm_install",
    "helm_uninstall",
    "helm_upgrade",
    "helm_rollback",
    "rollout_restart",
    "rollout_undo",
}
DESTRUCTIVE = {
    "pods_delete",
    "pods_exec",
    "resources_create_or_update",
    "resources_delete",
    "resources_scale",
    "helm_uninstall",
    "helm_upgrade",
    "helm_rollback",
    "rollout_restart",
    "rollout_undo",
}


async def _names(url: str, token: str) -> set[str]:
    async with mcp_client(url, token) as client:
        return {t.name for t in (await client.list_tools()).tools}


async def test_read_only_exposes_only_read_only_tools(
    backend_factory: Any, backend: Any, tokens: Tokens
) -> None:
    read_only = await backend_factory(read_only=True)
    everything = await _names(backend.url, tokens.nobody)
    names = await _names(read_only.url, tokens.nobody)
    assert names == everything - WRITE_TOOLS
    async with mcp_client(read_only.url, tokens.admin) as client:
        with pytest.raises(MCPError, match="Unknown tool: 'pods_delete'"):
            await client.call_tool("pods_delete", {"name": "x", "namespace": NS})


async def test_disable_destructive_hides_destructive_tools(
    backend_factory: Any, backend: Any, tokens: Tokens
) -> None:
    running = await backend_factory(disable_destructive=True)
    everything = await _names(backend.url, tokens.nobody)
    assert await _names(running.url, tokens.nobody) == everything - DESTRUCTIVE


async def test_enabled_and_disabled_tools(backend_factory: Any, tokens: Tokens) -> None:
    enabled = await backend_factory(
        enabled_tools=["pods_list", "pods_get", "pods_delete"], disabled_tools=["pods_delete"]
    )
    assert await _names(enabled.url, tokens.nobody) == {"pods_list", "pods_get"}


async def test_output_cap_truncates_with_a_hint(
    backend_factory: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    small = await backend_factory(output_max_chars=1000)
    async with mcp_client(small.url, tokens.viewer) as client:
        result = await client.call_tool(
            "pods_list_in_namespace", {"namespace": NS, "output": "yaml"}
        )
    text = text_of(result)
    assert not result.is_error
    assert "[output truncated:" in text
    assert "limit and continue" in text
    assert len(text) < 1400
    assert result.structured_content["truncated"] is True


async def test_access_token_argument_is_opt_in_and_stripped(
    backend_factory: Any, backend: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    running = await backend_factory(accept_token_in_arguments=True)
    async with mcp_client(running.url, None) as client:
        tools = (await client.list_tools()).tools
        assert all("access_token" not in t.input_schema["properties"] for t in tools)
        ok = await client.call_tool(
            "pods_list_in_namespace", {"namespace": NS, "access_token": tokens.viewer}
        )
        missing = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert not ok.is_error, text_of(ok)
    assert tokens.viewer not in text_of(ok)
    assert missing.is_error
    assert "no bearer token" in text_of(missing)
    # Off by default: the argument is ignored and the header's identity is used.
    async with mcp_client(backend.url, tokens.nobody) as client:
        ignored = await client.call_tool(
            "pods_list_in_namespace", {"namespace": NS, "access_token": tokens.admin}
        )
    assert ignored.is_error
    assert "mcpb-nobody" in text_of(ignored)


async def test_denied_kinds_configurable(
    backend_factory: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    running = await backend_factory(denied_kinds=[{"kind": "ConfigMap"}])
    async with mcp_client(running.url, tokens.admin) as client:
        cm = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": NS},
        )
        sa = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "ServiceAccount", "namespace": NS}
        )
    assert cm.is_error
    assert "ConfigMap" in text_of(cm)
    assert "denied" in text_of(cm)
    assert not sa.is_error, text_of(sa)  # the list replaced the defaults


async def test_denied_kinds_match_resource_names_case_insensitively(
    backend_factory: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    # `secrets` (the resource name) and `configmap` (lower case) once silently denied nothing.
    running = await backend_factory(denied_kinds=[{"kind": "secrets"}, {"kind": "configmap"}])
    async with mcp_client(running.url, tokens.admin) as client:
        secret = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "Secret", "name": "db-creds", "namespace": NS},
        )
        secrets = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "Secret", "namespace": NS}
        )
        cm = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": NS},
        )
        pods = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    for result in (secret, secrets, cm):
        assert result.is_error
        assert "denied by this server's policy" in text_of(result)
    assert "hunter2" not in text_of(secret) + text_of(secrets)
    assert not pods.is_error, text_of(pods)


async def test_path_tricks_in_names_cannot_bypass_the_access_layer(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """'..' in a name would let the HTTP layer rewrite the path after the access check."""
    attempts = [
        ("pods_get", {"name": "../../serviceaccounts/default", "namespace": NS}),
        ("pods_get", {"name": "x", "namespace": "../apis/rbac.authorization.k8s.io/v1"}),
        (
            "resources_get",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": NS,
                "name": "../secrets/db-creds",
            },
        ),
        ("pods_log", {"name": "web?container=other", "namespace": NS}),
        ("pods_exec", {"name": "..", "namespace": NS, "command": ["id"]}),
        ("pods_top", {"name": "a/b", "namespace": NS}),
    ]
    async with connect(tokens.admin) as client:
        for tool, args in attempts:
            result = await client.call_tool(tool, args)
            assert result.is_error, (tool, args)
            assert "not a valid Kubernetes object name" in text_of(result), text_of(result)


async def test_big_lists_keep_text_and_drop_structured_rows(
    connect: Any, tokens: Tokens, cluster_a: Any, workloads: dict[str, Any]
) -> None:
    import asyncio
    import contextlib

    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio.client.rest import ApiException

    ns = "mcpb-many"
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespace({"metadata": {"name": ns}})

        async def make(i: int) -> None:
            with contextlib.suppress(ApiException):
                await core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i:03d}"}})

        await asyncio.gather(*(make(i) for i in range(120)))
    args = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns}
    async with connect(tokens.viewer) as client:
        everything = await client.call_tool("resources_list", args)
        page = await client.call_tool("resources_list", {**args, "limit": 50})
    assert everything.structured_content["count"] >= 120
    assert "items" not in everything.structured_content
    assert "more than 100 rows" in everything.structured_content["itemsOmitted"]
    assert all(f"cm-{i:03d}" in text_of(everything) for i in range(120))
    assert len(page.structured_content["items"]) == 50
    assert page.structured_content["continue"]
