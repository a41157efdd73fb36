"""Events, namespaces, nodes and configuration tools; two clusters picked with ``context``;
an unreachable cluster named in the error."""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes_asyncio import client as k8s
from mcp_types import CallToolResult

from tests.mcp_backend.conftest import (
    NS,
    NS_B,
    Tokens,
    mcp_client,
    same_figures,
    text_of,
)
from tests.testbed.cluster import NODE_BASE_MEMORY_BYTES, Cluster
from tests.testbed.metrics_server import MetricsServer, nanocores
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
    connect: Any, tokens: Tokens, kwok_nodes: list[str], cluster_a: Cluster
) -> None:
    """The API server really proxies to the kwok nodes (through its egress proxy), and
    the tools report exactly what kwok v0.8.0's kubelet emulation answers: ``/logs/`` is a
    registered "disabled" handler (405, pkg/kwok/server/debugging.go), ``/stats/summary`` has no
    handler at all (go-restful's 404)."""
    node = kwok_nodes[0]
    async with connect(tokens.admin) as client:
        nodes = await client.call_tool("resources_list", {"apiVersion": "v1", "kind": "Node"})
        got = await client.call_tool(
            "resources_get", {"apiVersion": "v1", "kind": "Node", "name": node}
        )
        log = await client.call_tool("nodes_log", {"name": node, "query": "kubelet"})
        stats = await client.call_tool("nodes_stats_summary", {"name": node})
        missing = await client.call_tool("nodes_stats_summary", {"name": "no-such-node"})
        bad_query = await client.call_tool("nodes_log", {"name": node, "query": "../etc/passwd"})
    assert {r["Name"] for r in nodes.structured_content["items"]} >= set(kwok_nodes)
    status = yaml.safe_load(text_of(got))["status"]
    assert {"type": "InternalIP", "address": cluster_a.node_ip} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == cluster_a.kubelet_port

    prefix = (
        f"the kubelet of node {node!r} on cluster 'cluster-a' answered GET /{{}} with HTTP {{}} "
        "through the node proxy: it does not serve this endpoint here (emulated kubelets such as "
        "kwok or virtual nodes serve only part of the kubelet API). Details: "
    )
    assert log.is_error
    assert text_of(log).startswith(prefix.format("logs/", 405)), text_of(log)
    assert text_of(log).endswith(": Debug endpoints are disabled."), text_of(log)  # kwok's text
    assert stats.is_error
    assert text_of(stats).startswith(prefix.format("stats/summary", 404)), text_of(stats)
    assert "404 page not found" in text_of(stats)  # go-restful's answer, not the API server's
    # The API server's own 404 (no such node) stays a plain "not found".
    assert missing.is_error
    assert 'nodes "no-such-node" not found' in text_of(missing)
    assert "kubelet" not in text_of(missing)
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
    """Cluster B never runs a metrics-server: no metrics.k8s.io there."""
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool("nodes_top", {"context": "cluster-b"})
    assert result.is_error
    assert "metrics API (metrics.k8s.io) not available on cluster 'cluster-b'" in text_of(result)


NodeUsage = list[tuple[str, str, str]]  # name, cpu, memory


async def _api_node_usage(
    api: k8s.ApiClient, name: str | None = None, selector: str = ""
) -> NodeUsage:
    """What the metrics API itself says (admin client), like nodes_top's rows."""
    metrics = k8s.CustomObjectsApi(api)
    if name is not None:
        items = [
            await metrics.get_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes", name)
        ]
    else:
        body = await metrics.list_cluster_custom_object(
            "metrics.k8s.io", "v1beta1", "nodes", label_selector=selector
        )
        items = body["items"]
    return sorted((i["metadata"]["name"], i["usage"]["cpu"], i["usage"]["memory"]) for i in items)


def _node_rows(result: CallToolResult) -> NodeUsage:
    assert not result.is_error, text_of(result)
    return sorted((r["name"], r["cpu"], r["memory"]) for r in result.structured_content["items"])


def _bytes(quantity: str) -> int:
    """metrics-server's memory figures: 'NNMi', 'NNKi' or bytes."""
    for suffix, factor in (("Mi", 2**20), ("Ki", 2**10), ("", 1)):
        number = quantity[: len(quantity) - len(suffix)]
        if quantity.endswith(suffix) and number.isdigit():
            return int(number) * factor
    raise AssertionError(f"unexpected memory quantity {quantity!r}")


def _assert_node_rows_shown(result: CallToolResult, usage: NodeUsage) -> None:
    """The text table shows kubectl-top figures: millicores rounded up, whole MiB."""
    lines = text_of(result).splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    expected = set()
    for name, cpu, memory in usage:
        millicores = -(-nanocores(cpu) // 1_000_000)  # rounded up
        expected.add((name, f"{millicores}m", f"{_bytes(memory) // 2**20}Mi"))
    assert {tuple(line.split()) for line in lines[1:]} == expected


async def test_nodes_top_matches_metrics_api(
    connect: Any,
    tokens: Tokens,
    kwok_nodes: list[str],
    metrics_server: MetricsServer,
    admin_client: k8s.ApiClient,
) -> None:
    async with connect(tokens.admin) as client:
        usage, result = await same_figures(
            lambda: _api_node_usage(admin_client),
            lambda: client.call_tool("nodes_top", {}),
        )
    assert _node_rows(result) == usage
    assert [name for name, _, _ in usage] == sorted(kwok_nodes)
    for _, cpu, memory in usage:
        # kwok's emulation: a node's own share (50m, 256Mi) plus its pods' usage
        assert nanocores(cpu) >= 0.049 * 1e9
        assert _bytes(memory) >= NODE_BASE_MEMORY_BYTES
    _assert_node_rows_shown(result, usage)


async def test_nodes_top_one_node_and_label_selector(
    connect: Any,
    tokens: Tokens,
    kwok_nodes: list[str],
    metrics_server: MetricsServer,
    admin_client: k8s.ApiClient,
) -> None:
    node = kwok_nodes[1]
    selector = f"kubernetes.io/hostname={node}"
    async with connect(tokens.admin) as client:
        one, named = await same_figures(
            lambda: _api_node_usage(admin_client, node),
            lambda: client.call_tool("nodes_top", {"name": node}),
        )
        selected_usage, selected = await same_figures(
            lambda: _api_node_usage(admin_client, selector=selector),
            lambda: client.call_tool("nodes_top", {"label_selector": selector}),
        )
        missing = await client.call_tool("nodes_top", {"name": "no-such-node"})
    assert [name for name, _, _ in one] == [node]
    assert _node_rows(named) == one
    _assert_node_rows_shown(named, one)
    assert [name for name, _, _ in selected_usage] == [node]
    assert _node_rows(selected) == selected_usage
    assert missing.is_error
    assert "no-such-node" in text_of(missing)
    assert "not found" in text_of(missing)


async def test_nodes_top_refused_without_metrics_rbac(
    connect: Any, tokens: Tokens, metrics_server: MetricsServer
) -> None:
    """``view`` grants no metrics.k8s.io: the API server refuses the caller's own token."""
    async with connect(tokens.viewer) as client:
        result = await client.call_tool("nodes_top", {})
    assert result.is_error
    text = text_of(result)
    assert "403" in text
    assert "mcpb-viewer" in text
    assert "list nodes.metrics.k8s.io" in text


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
