"""Events, namespaces, nodes and configuration tools; two clusters picked with ``context``;
an unreachable cluster named in the error."""

from __future__ import annotations

from typing import Any

import yaml

from tests.mcp_backend.conftest import NS, NS_B, Tokens, mcp_client, text_of
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port


async def test_events_list_in_namespace(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("events_list", {"namespace": NS})
        narrowed = await client.call_tool(
            "events_list", {"namespace": NS, "fieldSelector": "type=Warning"}
        )
    text = text_of(result)
    assert not result.is_error, text
    assert "Scheduled" in text or "ScalingReplicaSet" in text or "SuccessfulCreate" in text
    assert not narrowed.is_error
    assert all(r.get("Type") == "Warning" for r in narrowed.structured_content.get("items", []))


async def test_events_list_refused(connect: Any, tokens: Tokens) -> None:
    async with connect(tokens.nobody) as client:
        result = await client.call_tool("events_list", {})
    assert result.is_error
    assert "list events" in text_of(result)


async def test_namespaces_list(connect: Any, tokens: Tokens, workloads: dict[str, Any]) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("namespaces_list", {})
        refused_client = None
    names = {r["Name"] for r in result.structured_content["items"]}
    assert {"default", "kube-system", NS} <= names
    assert refused_client is None
    async with connect(tokens.nobody) as client:
        refused = await client.call_tool("namespaces_list", {})
    assert refused.is_error
    assert "list namespaces" in text_of(refused)


async def test_nodes_via_resources_list_and_node_proxy(
    connect: Any, tokens: Tokens, kwok_nodes: list[str]
) -> None:
    async with connect(tokens.admin) as client:
        nodes = await client.call_tool("resources_list", {"apiVersion": "v1", "kind": "Node"})
        log = await client.call_tool("nodes_log", {"name": kwok_nodes[0], "query": "kubelet"})
        stats = await client.call_tool("nodes_stats_summary", {"name": kwok_nodes[0]})
        bad_query = await client.call_tool(
            "nodes_log", {"name": kwok_nodes[0], "query": "../etc/passwd"}
        )
    assert {r["Name"] for r in nodes.structured_content["items"]} >= set(kwok_nodes)
    # kwok emulates no kubelet log or stats endpoints: the answer must say so clearly, or
    # (on a kwok that does) carry content.
    for result in (log, stats):
        text = text_of(result)
        assert (result.is_error and kwok_nodes[0] in text and "node proxy" in text) or (
            not result.is_error and text.strip()
        ), text
    assert bad_query.is_error
    assert "without '..'" in text_of(bad_query)


async def test_nodes_proxy_refused_for_viewer(
    connect: Any, tokens: Tokens, kwok_nodes: list[str]
) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("nodes_stats_summary", {"name": kwok_nodes[0]})
    assert result.is_error
    assert "403" in text_of(result)
    assert "nodes/proxy" in text_of(result)


async def test_nodes_top_says_metrics_api_is_absent(connect: Any, tokens: Tokens) -> None:
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("nodes_top", {})
    assert result.is_error
    assert "not available on cluster 'cluster-a'" in text_of(result)


async def test_configuration_tools_show_clusters_without_secrets(
    connect: Any, tokens: Tokens, cluster_a: Cluster, cluster_b: Cluster
) -> None:
    async with connect(tokens.nobody) as client:
        contexts = await client.call_tool("configuration_contexts_list", {})
        minified = await client.call_tool("configuration_view", {})
        full = await client.call_tool("configuration_view", {"minified": False})
    assert contexts.structured_content["contexts"] == [
        {"name": "cluster-a", "server": cluster_a.server, "default": True},
        {"name": "cluster-b", "server": cluster_b.server, "default": False},
    ]
    assert [c["name"] for c in yaml.safe_load(text_of(minified))["clusters"]] == ["cluster-a"]
    view = yaml.safe_load(text_of(full))
    assert [c["name"] for c in view["clusters"]] == ["cluster-a", "cluster-b"]
    assert tokens.nobody not in text_of(full)
    assert "BEGIN CERTIFICATE" not in text_of(full)


async def test_two_clusters_picked_with_context(
    connect: Any, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    async with connect(tokens.admin_b) as client:
        on_b = await client.call_tool(
            "resources_list",
            {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS_B, "context": "cluster-b"},
        )
        on_a = await client.call_tool(
            "resources_list", {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS_B}
        )
        unknown = await client.call_tool("pods_list", {"context": "cluster-z"})
    assert not on_b.is_error
    assert "only-on-b" in text_of(on_b)
    # B's token means nothing to cluster A: A's API server rejects it.
    assert on_a.is_error
    assert "401" in text_of(on_a)
    assert "cluster-a" in text_of(on_a)
    assert unknown.is_error
    assert "unknown context 'cluster-z'" in text_of(unknown)
    assert "cluster-a, cluster-b" in text_of(unknown)


async def test_unreachable_cluster_is_named_with_its_url(
    backend_factory: Any, tokens: Tokens, cluster_a: Cluster
) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    running = await backend_factory(
        clusters=[
            {
                "name": "cluster-a",
                "server": cluster_a.server,
                "ca_file": str(cluster_a.ca_file),
                "default": True,
            },
            {"name": "dead", "server": dead, "ca_file": str(cluster_a.ca_file)},
        ],
        request_timeout_s=3,
    )
    async with mcp_client(running.url, tokens.admin) as client:
        result = await client.call_tool("pods_list", {"context": "dead"})
        discovery = await client.call_tool(
            "resources_list", {"apiVersion": "apps/v1", "kind": "Deployment", "context": "dead"}
        )
        healthy = await client.call_tool("namespaces_list", {})
    assert discovery.is_error
    assert dead in text_of(discovery)
    assert "unreachable" in text_of(discovery)
    assert result.is_error
    assert "'dead'" in text_of(result)
    assert dead in text_of(result)
    assert "unreachable" in text_of(result)
    assert not healthy.is_error  # one dead cluster does not affect the others


async def test_hung_cluster_discovery_is_bounded_and_isolated(
    backend_factory: Any, tokens: Tokens, cluster_a: Cluster
) -> None:
    """A real TCP listener that accepts and never answers (a hung API server)."""
    import asyncio

    held: list[asyncio.StreamWriter] = []

    async def swallow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, never reply

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = f"https://127.0.0.1:{port}"
    try:
        running = await backend_factory(
            clusters=[
                {
                    "name": "cluster-a",
                    "server": cluster_a.server,
                    "ca_file": str(cluster_a.ca_file),
                    "default": True,
                },
                {"name": "hung", "server": hung, "ca_file": str(cluster_a.ca_file)},
            ],
            discovery_timeout_s=1.5,
        )
        args = {"apiVersion": "apps/v1", "kind": "Deployment", "context": "hung"}
        async with mcp_client(running.url, tokens.admin) as client:
            first, healthy = await asyncio.gather(
                client.call_tool("resources_list", args),
                client.call_tool("namespaces_list", {}),
            )
            connections_after_first = len(held)
            again = await client.call_tool("resources_list", args)
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert first.is_error
    assert "API discovery of cluster 'hung'" in text_of(first)
    assert hung in text_of(first)
    assert "took longer than 1.5s" in text_of(first)  # discovery_timeout_s, not the request's
    assert not healthy.is_error  # the other cluster answered meanwhile
    assert connections_after_first >= 1
    assert text_of(again) == text_of(first)  # right after a failure: fail fast, same reason,
    assert len(held) == connections_after_first  # without dialling the hung server again
