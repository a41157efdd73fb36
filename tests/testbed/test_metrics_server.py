"""kwok's fake nodes are reachable through the API server's node proxy (a global unicast InternalIP
reached through the egress proxy, while kwok listens on loopback only), and the real
metrics-server serves their usage through the aggregation layer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s

from tests.testbed.cluster import NODE_BASE_MEMORY_BYTES, Cluster
from tests.testbed.egress_proxy import NODE_IP
from tests.testbed.metrics_server import API_SERVICE, MetricsServer, nanocores


def test_kwok_listens_on_loopback_only(cluster_a: Cluster) -> None:
    """Nothing of the testbed listens on the machine's network: kwok's port (which runs exec
    commands for anyone) is bound to 127.0.0.1, and the nodes' InternalIP is not local."""
    assert cluster_a.node_ip == NODE_IP
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == cluster_a.kubelet_port:  # 0A: LISTEN
            assert socket.inet_ntoa(bytes.fromhex(address)[::-1]) == "127.0.0.1"
            break
    else:
        raise AssertionError(f"nobody listens on kwok's port {cluster_a.kubelet_port}")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(OSError, match="assign"),
    ):
        sock.bind((cluster_a.node_ip, 0))  # not an address of this machine


async def test_node_proxy_reaches_kwok(
    cluster_a: Cluster, admin_client: k8s.ApiClient, kwok_nodes: list[str]
) -> None:
    core = k8s.CoreV1Api(admin_client)
    node = await core.read_node(kwok_nodes[0])
    assert {"type": "InternalIP", "address": cluster_a.node_ip} in [
        a.to_dict() for a in node.status.addresses
    ]
    # With a loopback InternalIP: 400 "address not allowed" (kube-apiserver does not proxy there).
    answer = await core.connect_get_node_proxy_with_path(kwok_nodes[0], "healthz")
    assert answer == "ok"


async def test_metrics_api_reports_kwok_nodes(
    metrics_server: MetricsServer, admin_client: k8s.ApiClient, kwok_nodes: list[str]
) -> None:
    registration = k8s.ApiregistrationV1Api(admin_client)
    api_service = await registration.read_api_service(API_SERVICE)
    available = [c for c in api_service.status.conditions if c.type == "Available"]
    assert [c.status for c in available] == ["True"]
    metrics = k8s.CustomObjectsApi(admin_client)
    body = await metrics.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
    usage = {item["metadata"]["name"]: item["usage"] for item in body["items"]}
    assert set(usage) == set(kwok_nodes)
    for figures in usage.values():
        assert nanocores(figures["cpu"]) > 0
        memory = figures["memory"]  # e.g. "384Mi": the nodes' own 256Mi plus their pods'
        assert memory.endswith("Mi")
        assert int(memory[:-2]) * 2**20 >= NODE_BASE_MEMORY_BYTES
    assert metrics_server.startup_seconds["nodes_reported"] < 120
