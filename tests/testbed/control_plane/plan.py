"""Stage 1 of starting a testbed cluster, nothing started yet: its ports, its PKI (serving
certificates from the shared CA, client identities from the cluster's own CA, the front-proxy CA
of the aggregation layer, the service-account key) and every configuration file, as one
:class:`Plan` the command lines (:mod:`.command_lines`) are built from."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.testbed import build, egress_proxy, pki
from tests.testbed.cluster import HOST, JWTIssuer, scripted_log_path
from tests.testbed.control_plane import config_files as files
from tests.testbed.local_https import https_status
from tests.testbed.pki import CertificateAuthority, CertPair
from tests.testbed.ports import free_port

FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class Plan:
    """Everything a cluster's processes are started with: ports, certificates, config files."""

    name: str
    dir: Path
    ca: CertificateAuthority
    binaries: Mapping[str, Path]
    ports: Mapping[str, int]
    server: str
    node_ip: str
    client_ca: CertificateAuthority
    admin: CertPair
    kubelet_client: CertPair
    front_proxy_ca: CertificateAuthority
    front_proxy_client: CertPair
    serving: Mapping[str, CertPair]
    service_account: CertPair
    kubeconfigs: Mapping[str, Path]
    authn_config: Path
    fake_log: Path
    exec_dir: Path
    kwok_config: Path
    egress_socket: Path
    egress_config: Path
    tracing_config: Path | None

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (plain HTTP on the loopback interface)."""
        return f"http://{HOST}:{self.ports['etcd']}"

    def healthz(self, comp: str) -> Callable[[], bool]:
        """A check that component ``comp`` answers 200 on ``/healthz``."""
        url = f"https://{HOST}:{self.ports[comp]}/healthz"
        return lambda: https_status(url, self.ca.cert) == 200


def make_plan(
    name: str,
    ca: CertificateAuthority,
    run_dir: Path,
    jwt_issuers: Sequence[JWTIssuer],
    tracing_endpoint: str | None,
) -> Plan:
    """Stage 1: ports, PKI and every configuration file, nothing started."""
    cluster_dir = run_dir / name
    cluster_dir.mkdir(parents=True, exist_ok=True)
    ports = {
        comp: free_port() for comp in ("etcd", "etcd-peer", "apiserver", "cm", "sched", "kwok")
    }
    server = f"https://{HOST}:{ports['apiserver']}"
    node_ip = egress_proxy.NODE_IP

    # PKI: serving certificates from the shared CA; client identities from this cluster's own CA.
    client_ca = CertificateAuthority(cluster_dir / "pki", name=f"kmg-{name}-client-ca")
    admin = client_ca.issue("admin", organizations=("system:masters",), client=True, server=False)
    # The controller manager runs its controllers with its own identity
    # (--use-service-account-credentials=false): one token per controller costs ~4 s of startup.
    cm_client = client_ca.issue(
        "system:kube-controller-manager",
        organizations=("system:masters",),
        client=True,
        server=False,
    )
    sched_client = client_ca.issue("system:kube-scheduler", client=True, server=False)
    # Aggregation layer (metrics-server): the API server authenticates to aggregated API servers
    # with this client certificate; they trust it through the request-header CA it publishes.
    front_proxy_ca = CertificateAuthority(
        cluster_dir / "pki" / "front-proxy", name=f"kmg-{name}-front-proxy-ca"
    )
    serving = {comp: ca.issue(f"{name}-{comp}") for comp in ("apiserver", "cm", "sched")}
    # kwok is every fake node's kubelet: the API server reaches it at the nodes' InternalIP
    # (through the egress proxy), metrics-server at their InternalDNS name, localhost.
    serving["kwok"] = ca.issue(f"{name}-kwok", hosts=(HOST, "localhost", node_ip))

    kubeconfigs = {
        who: files.write_kubeconfig(cluster_dir / f"{who}.kubeconfig", name, server, ca.cert, pair)
        for who, pair in (
            ("admin", admin),
            ("controller-manager", cm_client),
            ("scheduler", sched_client),
        )
    }
    authn_config = cluster_dir / "authentication-config.yaml"
    authn_config.write_text(yaml.safe_dump(files.authentication_configuration(jwt_issuers)))
    fake_log = cluster_dir / "fake-container.log"
    files.write_fake_log(fake_log)
    scripted_log_path(fake_log).touch()
    exec_dir = cluster_dir / "exec"
    exec_dir.mkdir(exist_ok=True)
    kwok_config = cluster_dir / "kwok.yaml"
    kwok_config.write_text(files.kwok_config(fake_log, exec_dir))
    egress_socket = files.socket_path(cluster_dir / "egress.sock")
    egress_config = cluster_dir / "egress-selector.yaml"
    egress_config.write_text(yaml.safe_dump(files.egress_selector_configuration(egress_socket)))
    tracing_config = None
    if tracing_endpoint is not None:
        tracing_config = cluster_dir / "tracing-config.yaml"
        tracing_config.write_text(yaml.safe_dump(files.tracing_configuration(tracing_endpoint)))
    return Plan(
        name=name,
        dir=cluster_dir,
        ca=ca,
        binaries={
            comp: build.binary(comp)
            for comp in (
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
            )
        },
        ports=ports,
        server=server,
        node_ip=node_ip,
        client_ca=client_ca,
        admin=admin,
        kubelet_client=client_ca.issue("kube-apiserver-kubelet-client", client=True, server=False),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=front_proxy_ca.issue(FRONT_PROXY_CLIENT, client=True, server=False),
        serving=serving,
        service_account=pki.rsa_key_pair(cluster_dir / "pki", "service-account"),
        kubeconfigs=kubeconfigs,
        authn_config=authn_config,
        fake_log=fake_log,
        exec_dir=exec_dir,
        kwok_config=kwok_config,
        egress_socket=egress_socket,
        egress_config=egress_config,
        tracing_config=tracing_config,
    )
