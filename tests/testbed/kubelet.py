"""A real kubelet (``k8s.io/kubernetes/cmd/kubelet``, same version as the control plane) with a
real CRI runtime (containerd v2, ``github.com/containerd/containerd/v2``), registered as one node of
a testbed cluster, so the node proxy's ``/logs/`` and ``/stats/summary`` reach a real kubelet.

``start_kubelet(cluster, ca)`` gives a :class:`Kubelet`; started only by the tests that need it
(fixture ``real_kubelet``, on cluster B: cluster A runs metrics-server, which scrapes every node).

How it fits together:

* **The node's own /var/log and /var/lib.** The kubelet runs in a private mount namespace
  (``unshare --mount --propagation private``) in which ``/var/log`` and ``/var/lib`` are bind
  mounts of the node's directories under the run folder (:attr:`Kubelet.var_log`,
  ``<cluster>/kubelet-node/var-lib``), as on a node of its own (Kind does the same with a
  container). The kubelet thus uses its default paths (``/var/lib/kubelet``, ``/var/log/pods``,
  the hard-coded ``/var/lib/kubelet/device-plugins``) without touching the machine's, and its
  node log query ``/logs/`` serves the node's ``/var/log``: tests write files there, and the
  kubelet's own log is ``/var/log/kubelet.log`` (what ``query=kubelet`` returns on a node without
  journald). ``/var/lib/dbus`` (machine id) is bound back into the private ``/var/lib``.
* **Kernel tunables.** Unless ``protectKernelDefaults`` is set (then it refuses to start when they
  differ), the kubelet sets ``vm.overcommit_memory=1``, ``kernel.panic=10``,
  ``kernel.panic_on_oops=1`` (and three others when they differ) on the machine
  (``setupKernelTunables`` in ``pkg/kubelet/cm/container_manager_linux.go``). In its mount
  namespace those ``/proc/sys`` files are bind mounts of private copies (same values as the
  machine's), so its writes land there: the machine keeps its values. ``makeIPTablesUtilChains:
  false`` keeps it out of the machine's iptables; it creates no cgroup (below).
* **Address.** The kubelet listens on 127.0.0.1 (free port). The API server reaches nodes at their
  InternalIP, which must be global unicast: as for the kwok nodes, ``egress_proxy.NODE_IP``, which
  the egress proxy maps to 127.0.0.1 (port kept). A kubelet refuses a ``--node-ip`` that is not an
  address of the machine, so it runs with ``--cloud-provider=external`` (no ``--node-ip``) and
  :func:`start_kubelet` plays the cloud controller manager's node part: it sets the node's
  addresses (InternalIP ``NODE_IP``, Hostname) and removes the
  ``node.cloudprovider.kubernetes.io/uninitialized`` taint; the kubelet keeps addresses a cloud
  provider set (``NodeAddress`` in ``pkg/kubelet/nodestatus/setters.go``).
* **TLS and auth.** Serving certificate from the run's CA (the API server checks it:
  ``--kubelet-certificate-authority``); the kubelet authenticates callers by x509 (the cluster's
  client CA, which issued the API server's ``kube-apiserver-kubelet-client`` certificate) or bearer
  token (webhook TokenReview), anonymous off, and authorizes them by webhook
  (SubjectAccessReview), like a kubeadm node: ``kube-apiserver-kubelet-client`` is bound to the
  ClusterRole ``system:kubelet-api-admin``. The kubelet's own identity is ``system:node:<name>``
  (group ``system:nodes``, client certificate from the cluster's client CA), authorized by the
  API server's Node authorizer.
* **Scheduling.** The node registers with the taint :data:`TAINT` (NoSchedule) and the label
  :data:`NODE_LABEL`: ordinary test pods stay on the kwok nodes. It also stays NotReady: containerd
  has no CNI network configured (``NetworkReady=false``), and the node lifecycle controller adds
  its ``not-ready`` taints. No pod ever runs on it, so runc and CNI plugins are not needed.
* **cgroup v1.** This machine mounts cgroup v1 (hybrid): kubelet v1.35+ refuses that unless
  ``failCgroupV1: false``. ``cgroupsPerQOS: false`` and no node-allocatable enforcement: the
  kubelet creates no cgroup. containerd reports the cgroupfs driver (runc runtime without
  ``SystemdCgroup``), which the kubelet takes from the CRI (``RuntimeConfig``).
* **containerd** runs with its root under the node's ``var-lib``, its state and sockets in a short
  private temp dir (Unix socket paths are limited to 108 bytes), the ``native`` snapshotter (no
  overlay mounts), NRI and the other snapshotters disabled, no config imports from ``/etc``, CNI
  and CDI directories under the node dir, in a private mount namespace too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, egress_proxy, process
from tests.testbed.cluster import HOST, Cluster
from tests.testbed.kubelet_node import config as node_config
from tests.testbed.kubelet_node.credentials import issue_client_cert, write_kubeconfig
from tests.testbed.kubelet_node.mount_namespace import mount_namespace_script
from tests.testbed.local_https import https_request
from tests.testbed.pki import CertificateAuthority, CertPair
from tests.testbed.ports import free_port

NODE_NAME = "kubelet-node-0"
NODE_LABEL = ("type", "kubelet")
TAINT = {"key": "kmg.testbed/real-kubelet", "value": "true", "effect": "NoSchedule"}
UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
# The API server's client certificate for kubelets (control_plane/plan.py issues it).
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
READY_TIMEOUT = 120.0


@dataclass
class Kubelet:
    """A running kubelet + containerd registered as node :attr:`node_name` of :attr:`cluster`."""

    cluster: Cluster
    node_name: str
    port: int
    var_log: Path  # the node's /var/log (what the kubelet's /logs/ serves)
    node_dir: Path
    client_cert: CertPair  # a client certificate the kubelet accepts (cluster admin)
    processes: dict[str, process.ManagedProcess] = field(default_factory=dict)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    socket_dir: Path | None = None
    # /proc/sys values of KERNEL_TUNABLES when it started (the machine must keep them).
    host_tunables: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """The kubelet's own log: ``/var/log/kubelet.log`` on the node."""
        return self.var_log / "kubelet.log"

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, str]:
        """GET ``path`` from the kubelet itself (not through the API server), as the cluster's
        admin (x509, authorized by the kubelet's webhook)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return https_request(
            "GET", f"{self.url}{path}{query}", self.cluster.ca_file, self.client_cert
        )

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop(timeout=10)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def start_kubelet(
    cluster: Cluster,
    ca: CertificateAuthority,
    *,
    node_name: str = NODE_NAME,
    timeout: float = READY_TIMEOUT,
) -> Kubelet:
    """Start containerd and a kubelet registering node ``node_name`` with ``cluster``; return once
    the API server's node proxy reaches the kubelet and its Summary API has node figures.

    Stages: the node's folders and identity, the API server's kubelet-client binding,
    containerd (until listening), the kubelet (until registered), the node's initialization,
    then until the node proxy reaches it and it serves node figures."""
    if os.geteuid() != 0:
        raise process.ComponentError(
            "the testbed's real kubelet runs as root (its own mount namespace, cAdvisor, "
            "containerd): run the tests that use the `real_kubelet` fixture as root"
        )
    t0 = time.monotonic()
    node_dir = cluster.log_dir / "kubelet-node"
    var_log, var_lib = node_dir / "var-log", node_dir / "var-lib"
    for d in (var_log, var_lib / "kubelet", node_dir / "sysctl"):
        d.mkdir(parents=True, exist_ok=True)
    sockets = Path(tempfile.mkdtemp(prefix="kmg-node-"))
    kubelet = Kubelet(
        cluster=cluster,
        node_name=node_name,
        port=free_port(),
        var_log=var_log,
        node_dir=node_dir,
        client_cert=cluster.admin_cert,
        socket_dir=sockets,
    )
    try:
        _bind_apiserver_kubelet_client(cluster)
        containerd_sock = _start_containerd(kubelet, var_lib, timeout)
        kubelet.startup_seconds["containerd"] = time.monotonic() - t0
        proc = _start_kubelet_process(kubelet, ca, var_lib, containerd_sock)
        proc.wait_until(
            lambda: _node(cluster, node_name) is not None, timeout=timeout, what="registered"
        )
        kubelet.startup_seconds["registered"] = time.monotonic() - t0
        _initialize_node(cluster, node_name)
        proxy = f"/api/v1/nodes/{node_name}/proxy"
        proc.wait_until(
            lambda: _admin_get(cluster, f"{proxy}/healthz") == (200, "ok"),
            timeout=timeout,
            what="reachable through the node proxy (/healthz)",
        )
        kubelet.startup_seconds["proxy_reachable"] = time.monotonic() - t0
        proc.wait_until(
            lambda: _has_node_stats(_admin_get(cluster, f"{proxy}/stats/summary")),
            timeout=timeout,
            what="serving node figures (/stats/summary)",
        )
        kubelet.startup_seconds["stats_ready"] = time.monotonic() - t0
    except BaseException:
        kubelet.stop()
        raise
    (node_dir / "startup.json").write_text(json.dumps(kubelet.startup_seconds, indent=2))
    return kubelet


def _bind_apiserver_kubelet_client(cluster: Cluster) -> None:
    """The kubelet authorizes the API server's requests by SubjectAccessReview (kubeadm's
    binding: nodes/proxy, nodes/log, nodes/stats, ... for the API server's client identity)."""
    _admin_apply(
        cluster,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kmg:kube-apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": APISERVER_KUBELET_CLIENT,
                }
            ],
        },
    )


def _start_containerd(kubelet: Kubelet, var_lib: Path, timeout: float) -> Path:
    """containerd in its own mount namespace, until its socket (returned) listens."""
    assert kubelet.socket_dir is not None
    node_dir, sockets = kubelet.node_dir, kubelet.socket_dir
    containerd_sock = sockets / "containerd.sock"
    containerd_config = node_dir / "containerd.toml"
    containerd_config.write_text(
        node_config.containerd_config(
            root=var_lib / "containerd",
            state=sockets / "state",
            socket=containerd_sock,
            node_dir=node_dir,
        )
    )
    containerd = process.ManagedProcess(
        f"{kubelet.cluster.name}-containerd",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            build.binary("containerd"),
            f"--config={containerd_config}",
        ],
        node_dir / "containerd.log",
    )
    kubelet.processes["containerd"] = containerd
    containerd.start()
    containerd.wait_until(containerd_sock.exists, timeout=timeout, what="listening")
    return containerd_sock


def _start_kubelet_process(
    kubelet: Kubelet, ca: CertificateAuthority, var_lib: Path, containerd_sock: Path
) -> process.ManagedProcess:
    """The kubelet in its private mount namespace (not waited for): serving certificate from the
    run's CA, client identity ``system:node:<name>`` from the cluster's client CA."""
    cluster, node_dir, node_name = kubelet.cluster, kubelet.node_dir, kubelet.node_name
    pki_dir = node_dir / "pki"
    pki_dir.mkdir(exist_ok=True)
    serving = ca.issue(
        f"{node_name}-kubelet", hosts=(HOST, "localhost", egress_proxy.NODE_IP, node_name)
    )
    client_ca = cluster.log_dir / "pki"  # the cluster's client CA (see control_plane/plan.py)
    node_client = issue_client_cert(
        client_ca, pki_dir, f"system:node:{node_name}", organizations=("system:nodes",)
    )
    kubeconfig = write_kubeconfig(node_dir / "kubelet.kubeconfig", cluster, node_client)
    config = node_dir / "kubelet-config.yaml"
    config.write_text(
        yaml.safe_dump(
            node_config.kubelet_configuration(
                port=kubelet.port,
                healthz_port=free_port(),
                serving=serving,
                client_ca_file=client_ca / "ca.crt",
                runtime_endpoint=f"unix://{containerd_sock}",
                taint=TAINT,
            )
        )
    )
    script = mount_namespace_script(
        node_dir=node_dir,
        var_lib=var_lib,
        var_log=kubelet.var_log,
        host_tunables=kubelet.host_tunables,
    )
    # One log file, two names: the run folder's and the node's /var/log/kubelet.log.
    log = node_dir / "kubelet.log"
    log.touch()
    with contextlib.suppress(FileExistsError):
        kubelet.log_file.hardlink_to(log)
    argv: list[str | os.PathLike[str]] = [
        build.binary("kubelet"),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        "--cloud-provider=external",
        f"--node-labels={'='.join(NODE_LABEL)}",
        "--v=2",
    ]
    proc = process.ManagedProcess(
        f"{cluster.name}-kubelet",
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "kubelet", *argv],
        log,
    )
    kubelet.processes["kubelet"] = proc
    proc.start()
    return proc


# -- node object -----------------------------------------------------------------------------------
def _node(cluster: Cluster, name: str) -> dict[str, Any] | None:
    status, body = _admin_get(cluster, f"/api/v1/nodes/{name}")
    return json.loads(body) if status == 200 else None


def _initialize_node(cluster: Cluster, name: str) -> None:
    """The cloud controller manager's node initialization: addresses, then the taint off."""
    node = _node(cluster, name)
    assert node is not None
    status_patch = {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": egress_proxy.NODE_IP},
                {"type": "Hostname", "address": name},
            ]
        }
    }
    _admin_patch(cluster, f"/api/v1/nodes/{name}/status", status_patch)
    taints = [t for t in node["spec"].get("taints") or [] if t["key"] != UNINITIALIZED_TAINT]
    _admin_patch(cluster, f"/api/v1/nodes/{name}", {"spec": {"taints": taints}})


def _has_node_stats(answer: tuple[int, str]) -> bool:
    status, body = answer
    if status != 200:
        return False
    node = json.loads(body).get("node") or {}
    return bool((node.get("cpu") or {}).get("usageNanoCores") is not None and node.get("memory"))


# -- HTTP helpers ----------------------------------------------------------------------------------
def _admin_get(cluster: Cluster, path: str) -> tuple[int, str]:
    return cluster.admin_request("GET", path)


def _admin_patch(cluster: Cluster, path: str, patch: dict[str, Any]) -> None:
    status, body = cluster.admin_request(
        "PATCH", path, patch, content_type="application/merge-patch+json"
    )
    if status != 200:
        raise process.ComponentError(f"{cluster.name}: PATCH {path}: HTTP {status}: {body[:500]}")


def _admin_apply(cluster: Cluster, collection: str, obj: dict[str, Any]) -> None:
    """Create ``obj`` in ``collection``; an existing one (HTTP 409) is left as it is."""
    status, body = cluster.admin_request("POST", collection, obj)
    if status not in (200, 201, 409):
        raise process.ComponentError(
            f"{cluster.name}: creating {collection}/{obj['metadata']['name']}: HTTP {status}: "
            f"{body[:500]}"
        )
