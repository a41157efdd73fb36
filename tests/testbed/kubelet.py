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
import datetime as dt
import json
import os
import shlex
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.testbed import build, egress_proxy, process
from tests.testbed.cluster import HOST, Cluster
from tests.testbed.local_https import https_request
from tests.testbed.pki import CertificateAuthority, CertPair
from tests.testbed.ports import free_port

NODE_NAME = "kubelet-node-0"
NODE_LABEL = ("type", "kubelet")
TAINT = {"key": "kmg.testbed/real-kubelet", "value": "true", "effect": "NoSchedule"}
UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
# The API server's client certificate for kubelets (cluster.py issues it from the client CA).
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
READY_TIMEOUT = 120.0
# /proc/sys entries the kubelet writes when they differ from what it wants (setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


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
    the API server's node proxy reaches the kubelet and its Summary API has node figures."""
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
    containerd_sock = sockets / "containerd.sock"
    port = free_port()
    pki_dir = node_dir / "pki"
    pki_dir.mkdir(exist_ok=True)
    serving = ca.issue(
        f"{node_name}-kubelet", hosts=(HOST, "localhost", egress_proxy.NODE_IP, node_name)
    )
    client_ca = cluster.log_dir / "pki"  # the cluster's client CA (see start_cluster)
    node_client = _issue_client_cert(
        client_ca, pki_dir, f"system:node:{node_name}", organizations=("system:nodes",)
    )
    kubeconfig = _write_kubeconfig(node_dir / "kubelet.kubeconfig", cluster, node_client)
    kubelet = Kubelet(
        cluster=cluster,
        node_name=node_name,
        port=port,
        var_log=var_log,
        node_dir=node_dir,
        client_cert=cluster.admin_cert,
        socket_dir=sockets,
    )
    try:
        # The kubelet authorizes the API server's requests by SubjectAccessReview (kubeadm's
        # binding: nodes/proxy, nodes/log, nodes/stats, ... for the API server's client identity).
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
        containerd_config = node_dir / "containerd.toml"
        containerd_config.write_text(
            _containerd_config(
                root=var_lib / "containerd",
                state=sockets / "state",
                socket=containerd_sock,
                node_dir=node_dir,
            )
        )
        containerd = process.ManagedProcess(
            f"{cluster.name}-containerd",
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
        kubelet.startup_seconds["containerd"] = time.monotonic() - t0

        config = node_dir / "kubelet-config.yaml"
        config.write_text(
            yaml.safe_dump(
                _kubelet_configuration(
                    port=port,
                    healthz_port=free_port(),
                    serving=serving,
                    client_ca_file=client_ca / "ca.crt",
                    runtime_endpoint=f"unix://{containerd_sock}",
                )
            )
        )
        script = _mount_namespace_script(kubelet, var_lib)
        # One log file, two names: the run folder's and the node's /var/log/kubelet.log.
        log = node_dir / "kubelet.log"
        log.touch()
        with contextlib.suppress(FileExistsError):
            kubelet.log_file.hardlink_to(log)
        argv = [
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
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "kubelet",
                *argv,
            ],
            log,
        )
        kubelet.processes["kubelet"] = proc
        proc.start()
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


def _mount_namespace_script(kubelet: Kubelet, var_lib: Path) -> str:
    """The shell script that prepares the kubelet's private mount namespace, then execs it."""
    binds: list[tuple[Path, str]] = []
    if Path("/var/lib/dbus").is_dir():  # machine id (/etc/machine-id is used first)
        (var_lib / "dbus").mkdir(exist_ok=True)
        binds.append((Path("/var/lib/dbus"), str(var_lib / "dbus")))
    for tunable in KERNEL_TUNABLES:
        host = Path("/proc/sys", tunable)
        if not host.exists():
            continue
        copy = kubelet.node_dir / "sysctl" / tunable.replace("/", ".")
        kubelet.host_tunables[tunable] = host.read_text().strip()
        copy.write_text(kubelet.host_tunables[tunable] + "\n")
        binds.append((copy, str(host)))
    lines = ["set -e"]
    lines += [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in binds]
    lines += [
        f"mount --rbind {shlex.quote(str(var_lib))} /var/lib",  # with the dbus bind inside
        f"mount --bind {shlex.quote(str(kubelet.var_log))} /var/log",
        'exec "$@"',
    ]
    return "\n".join(lines) + "\n"


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


# -- configuration ---------------------------------------------------------------------------------
def _kubelet_configuration(
    *,
    port: int,
    healthz_port: int,
    serving: CertPair,
    client_ca_file: Path,
    runtime_endpoint: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": HOST,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": runtime_endpoint,
        "imageServiceEndpoint": runtime_endpoint,
        "registerWithTaints": [TAINT],
        # /logs/: the node log query (feature NodeLogQuery, GA and locked on in v1.36).
        "enableSystemLogHandler": True,
        "enableSystemLogQuery": True,
        # This machine: cgroup v1 (hybrid), maybe swap, no systemd.
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "resolvConf": "",
        "staticPodPath": "",
        "serializeImagePulls": True,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # No pods run here; eviction would only ever remove images.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%"},
        "shutdownGracePeriod": "0s",
        # Otherwise it adds KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains to the machine's
        # iptables (when iptables is installed), for kube-proxy's benefit.
        "makeIPTablesUtilChains": False,
    }


_DISABLED_PLUGINS = (
    "io.containerd.nri.v1.nri",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
    "io.containerd.mount-handler.v1.erofs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


def _containerd_config(*, root: Path, state: Path, socket: Path, node_dir: Path) -> str:
    def q(value: str | Path) -> str:
        return json.dumps(str(value))  # a TOML basic string

    disabled = ", ".join(q(p) for p in _DISABLED_PLUGINS)
    return f"""\
version = 4
root = {q(root)}
state = {q(state)}
imports = []
disabled_plugins = [{disabled}]

[plugins.'io.containerd.server.v1.grpc']
  address = {q(socket)}

[plugins.'io.containerd.server.v1.ttrpc']
  address = {q(f"{socket}.ttrpc")}

[plugins.'io.containerd.internal.v1.opt']
  path = {q(node_dir / "opt-containerd")}

[plugins.'io.containerd.transfer.v1.local']
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'native'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'

[plugins.'io.containerd.cri.v1.runtime']
  cdi_spec_dirs = [{q(node_dir / "cdi")}]

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [{q(node_dir / "cni-bin")}]
  conf_dir = {q(node_dir / "cni-net.d")}

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"""


# -- certificates ----------------------------------------------------------------------------------
def _issue_client_cert(
    ca_dir: Path, out_dir: Path, name: str, *, organizations: tuple[str, ...]
) -> CertPair:
    """A client certificate signed by the CA whose ``ca.crt``/``ca.key`` are in ``ca_dir``."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = name.replace(":", "-")
    pair = CertPair(out_dir / f"{stem}.crt", out_dir / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


def _write_kubeconfig(path: Path, cluster: Cluster, pair: CertPair) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster.name,
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_file),
                },
            }
        ],
        "users": [
            {
                "name": "kubelet",
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": "kubelet", "context": {"cluster": cluster.name, "user": "kubelet"}}],
        "current-context": "kubelet",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


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
