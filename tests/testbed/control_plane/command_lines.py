"""The command line of each process of a testbed cluster, from its :class:`~.plan.Plan`: etcd, the
egress proxy, kube-apiserver (audit policy ``apiserver-audit-policy.yaml`` next to this module),
kube-controller-manager, kube-scheduler and kwok."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.testbed.cluster import HOST, KWOK_NODE_ANNOTATION
from tests.testbed.control_plane.plan import FRONT_PROXY_CLIENT, Plan

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
AUDIT_POLICY = Path(__file__).with_name("apiserver-audit-policy.yaml")

Argv = list[str | os.PathLike[str]]


def etcd_argv(plan: Plan) -> Argv:
    peer_url = f"http://{HOST}:{plan.ports['etcd-peer']}"
    return [
        plan.binaries["etcd"],
        f"--name={plan.name}",
        f"--data-dir={plan.dir / 'etcd-data'}",
        f"--listen-client-urls={plan.etcd_url}",
        f"--advertise-client-urls={plan.etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={plan.name}={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",  # throwaway test data: no fsync makes writes much faster
        "--log-level=warn",
    ]


def egress_argv(plan: Plan) -> Argv:
    return [
        sys.executable,
        "-m",
        "tests.testbed.egress_proxy",
        f"--socket={plan.egress_socket}",
        f"--map={plan.node_ip}={HOST}",
    ]


def apiserver_argv(plan: Plan, audit_log: Path) -> Argv:
    serving, sa = plan.serving["apiserver"], plan.service_account
    argv: Argv = [
        plan.binaries["kube-apiserver"],
        f"--etcd-servers={plan.etcd_url}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['apiserver']}",
        f"--cert-dir={plan.dir / 'apiserver-certs'}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={plan.client_ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--authentication-config={plan.authn_config}",
        f"--service-account-issuer={plan.server}",
        f"--service-account-key-file={sa.cert}",
        f"--service-account-signing-key-file={sa.key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        f"--kubelet-certificate-authority={plan.ca.cert}",
        f"--kubelet-client-certificate={plan.kubelet_client.cert}",
        f"--kubelet-client-key={plan.kubelet_client.key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--requestheader-client-ca-file={plan.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-uid-headers=X-Remote-Uid",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={plan.front_proxy_client.cert}",
        f"--proxy-client-key-file={plan.front_proxy_client.key}",
        f"--egress-selector-config-file={plan.egress_config}",
        "--endpoint-reconciler-type=none",  # no real network: no endpoints for `kubernetes`
        "--profiling=false",
        f"--audit-policy-file={AUDIT_POLICY}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",  # each event written before the answer: no lag
    ]
    if plan.tracing_config is not None:
        argv.append(f"--tracing-config-file={plan.tracing_config}")
    return argv


def controller_manager_argv(plan: Plan) -> Argv:
    serving = plan.serving["cm"]
    return [
        plan.binaries["kube-controller-manager"],
        f"--kubeconfig={plan.kubeconfigs['controller-manager']}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['cm']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--cert-dir={plan.dir / 'cm-certs'}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        f"--service-account-private-key-file={plan.service_account.key}",
        f"--root-ca-file={plan.ca.cert}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--profiling=false",
    ]


def scheduler_argv(plan: Plan) -> Argv:
    serving = plan.serving["sched"]
    return [
        plan.binaries["kube-scheduler"],
        f"--kubeconfig={plan.kubeconfigs['scheduler']}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['sched']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        "--leader-elect=false",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--profiling=false",
    ]


def kwok_argv(plan: Plan) -> Argv:
    serving = plan.serving["kwok"]
    return [
        plan.binaries["kwok"],
        f"--kubeconfig={plan.kubeconfigs['admin']}",
        f"--config={plan.kwok_config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=" + "=".join(KWOK_NODE_ANNOTATION),
        f"--node-ip={plan.node_ip}",
        f"--node-port={plan.ports['kwok']}",
        f"--server-address={HOST}:{plan.ports['kwok']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        "--node-lease-duration-seconds=40",
    ]
