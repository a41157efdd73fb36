"""The real kubelet (with containerd) is a node of cluster B: registered with the version we
build, reached through B's node proxy at the documentation address, listening on loopback only,
authenticating and authorizing its callers, and leaving the machine's /proc/sys, /var/lib and
/var/log alone."""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes_asyncio import client as k8s

from tests.testbed import versions
from tests.testbed.cluster import Cluster
from tests.testbed.egress_proxy import NODE_IP
from tests.testbed.fixtures_kube import ServiceAccountTokenFactory
from tests.testbed.kubelet import NODE_LABEL, TAINT, UNINITIALIZED_TAINT, Kubelet
from tests.testbed.kubelet_node.mount_namespace import KERNEL_TUNABLES


async def test_kubelet_is_a_node_of_cluster_b(real_kubelet: Kubelet, cluster_b: Cluster) -> None:
    async with cluster_b.admin_client() as api:
        core = k8s.CoreV1Api(api)
        node = await core.read_node(real_kubelet.node_name)
        healthz = await core.connect_get_node_proxy_with_path(real_kubelet.node_name, "healthz")
    info = node.status.node_info
    assert info.kubelet_version == versions.KUBERNETES
    assert info.container_runtime_version == f"containerd://{versions.CONTAINERD[1:]}+unknown"
    assert [(a.type, a.address) for a in node.status.addresses] == [
        ("InternalIP", NODE_IP),
        ("Hostname", real_kubelet.node_name),
    ]
    assert node.status.daemon_endpoints.kubelet_endpoint.port == real_kubelet.port
    assert node.metadata.labels[NODE_LABEL[0]] == NODE_LABEL[1]
    taints = {(t.key, t.effect) for t in node.spec.taints}
    assert (TAINT["key"], TAINT["effect"]) in taints
    assert not any(key == UNINITIALIZED_TAINT for key, _ in taints)
    # No CNI network: the kubelet says so, and the node stays NotReady.
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "False"
    assert "network not ready" in ready.message
    assert healthz == "ok"  # through the API server's egress proxy to 127.0.0.1:<port>


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc shows each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_node_listens_on_loopback_only(real_kubelet: Kubelet) -> None:
    """kubelet (API, healthz) and containerd (CRI streaming server): 127.0.0.1 only."""
    kubelet_pid = real_kubelet.processes["kubelet"].proc.pid  # type: ignore[union-attr]
    kubelet_sockets = _listening_sockets(kubelet_pid)
    assert ("127.0.0.1", real_kubelet.port) in kubelet_sockets
    containerd_pid = real_kubelet.processes["containerd"].proc.pid  # type: ignore[union-attr]
    for pid in (kubelet_pid, containerd_pid):
        assert {addr for addr, _ in _listening_sockets(pid)} <= {"127.0.0.1"}


async def test_kubelet_authenticates_and_authorizes(
    real_kubelet: Kubelet, cluster_b: Cluster, service_account_token: ServiceAccountTokenFactory
) -> None:
    status, body = real_kubelet.get("/stats/summary")  # cluster admin's client certificate
    assert status == 200
    assert json.loads(body)["node"]["nodeName"] == real_kubelet.node_name

    def get(token: str | None) -> int:
        ctx = ssl.create_default_context(cafile=str(cluster_b.ca_file))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"{real_kubelet.url}/stats/summary", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    nobody = await service_account_token(cluster_b, name="kubelet-test-nobody")
    reader = await service_account_token(
        cluster_b,
        name="kubelet-test-stats",
        rules=[{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}],
        cluster_wide=True,
    )
    assert get(None) == 401  # anonymous authentication is off
    assert get(nobody) == 403  # webhook TokenReview: known; SubjectAccessReview: not allowed
    assert get(reader) == 200  # nodes/stats get


def test_machine_keeps_its_sysctls_and_directories(real_kubelet: Kubelet) -> None:
    """The kubelet wrote its kernel tunables into the private copies of its mount namespace;
    the machine's values are those read before it started. Its /var/lib and /var/log are the
    node's directories (bind mounts in its mount namespace, invisible to ours)."""
    for tunable in KERNEL_TUNABLES:
        assert Path("/proc/sys", tunable).read_text().strip() == real_kubelet.host_tunables[tunable]
    copy = real_kubelet.node_dir / "sysctl" / "vm.overcommit_memory"
    assert copy.read_text().strip() == "1"  # what the kubelet wants (VMOvercommitMemoryAlways)
    assert (real_kubelet.node_dir / "var-lib" / "kubelet" / "device-plugins").is_dir()
    assert (real_kubelet.var_log / "pods").is_dir()
    kubelet_pid = real_kubelet.processes["kubelet"].proc.pid  # type: ignore[union-attr]

    def mount_points(pid: int | str) -> set[str]:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        return {line.split()[4] for line in lines}

    private = {"/var/log", "/var/lib", *(f"/proc/sys/{t}" for t in KERNEL_TUNABLES)}
    if Path("/var/lib/dbus").is_dir():
        private.add("/var/lib/dbus")  # the machine's, bound back into the node's /var/lib
    assert private <= mount_points(kubelet_pid)
    assert not private & mount_points("self")
