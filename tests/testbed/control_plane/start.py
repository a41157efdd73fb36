"""Starting a testbed cluster (:class:`tests.testbed.cluster.Cluster`) in three stages: plan (ports,
PKI, config files: :mod:`.plan`), storage and API (etcd, the egress proxy, kube-apiserver, until
ready), control loops and nodes (controller manager, scheduler, kwok, until healthy and the
default service account exists).

Startup order (fast path): certificates and config files first, then etcd and kube-apiserver
together (the API server retries etcd), then, once ``/readyz`` answers, the controller manager,
scheduler and kwok in parallel; the cluster is ready when the ``default`` service account exists.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.testbed import paths, process
from tests.testbed.cluster import Cluster, JWTIssuer
from tests.testbed.control_plane import command_lines as argv
from tests.testbed.control_plane.command_lines import Argv
from tests.testbed.control_plane.plan import Plan, make_plan
from tests.testbed.local_https import https_status
from tests.testbed.pki import CertificateAuthority

ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 120.0
COMPONENT_TIMEOUT = 60.0
DEFAULT_SA_TIMEOUT = 60.0


def start_cluster(
    name: str,
    ca: CertificateAuthority,
    run_dir: Path,
    jwt_issuers: Sequence[JWTIssuer] = (),
    tracing_endpoint: str | None = None,
) -> Cluster:
    """Start a whole control plane named ``name`` and wait until it schedules and runs pods.

    Stages: plan (ports, PKI, config files), storage and API (etcd, the egress proxy,
    kube-apiserver, until ready), control loops and nodes (controller manager, scheduler, kwok,
    until healthy and the default service account exists).

    ``tracing_endpoint`` (``host:port`` of an OTLP/gRPC collector): the API server exports its
    spans there (:func:`.config_files.tracing_configuration`)."""
    t0 = time.monotonic()
    plan = make_plan(name, ca, run_dir, jwt_issuers, tracing_endpoint)
    cluster = Cluster(
        name=name,
        server=plan.server,
        ca_file=ca.cert,
        admin_kubeconfig=plan.kubeconfigs["admin"],
        admin_cert=plan.admin,
        log_dir=plan.dir,
        service_account_issuer=plan.server,
        fake_log_file=plan.fake_log,
        exec_dir=plan.exec_dir,
        node_ip=plan.node_ip,
        kubelet_port=plan.ports["kwok"],
    )
    cluster.startup_seconds["prepare"] = time.monotonic() - t0

    def managed(comp: str, command: Argv, **kw: Any) -> process.ManagedProcess:
        proc = process.ManagedProcess(f"{name}-{comp}", command, plan.dir / f"{comp}.log", **kw)
        cluster.processes[comp] = proc
        proc.start()
        return proc

    try:
        _start_storage_and_api(plan, cluster, managed)
        cluster.startup_seconds["apiserver_ready"] = time.monotonic() - t0
        _start_control_loops_and_nodes(plan, managed)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds["ready"] = time.monotonic() - t0
    return cluster


Starter = Callable[..., process.ManagedProcess]


def _start_storage_and_api(plan: Plan, cluster: Cluster, managed: Starter) -> None:
    """Stage 2: etcd, the egress proxy and kube-apiserver, until the API server is ready."""
    etcd = managed("etcd", argv.etcd_argv(plan))
    egress = managed("egress-proxy", argv.egress_argv(plan), cwd=paths.REPO_ROOT)
    apiserver = managed("kube-apiserver", argv.apiserver_argv(plan, cluster.audit_log))
    etcd.wait_until(
        lambda: process.http_ok(f"{plan.etcd_url}/health"), timeout=ETCD_TIMEOUT, what="healthy"
    )
    egress.wait_until(plan.egress_socket.exists, timeout=COMPONENT_TIMEOUT, what="listening")
    apiserver.wait_until(
        lambda: https_status(f"{plan.server}/readyz", plan.ca.cert) == 200,
        timeout=APISERVER_TIMEOUT,
        what="ready (/readyz)",
    )


def _start_control_loops_and_nodes(plan: Plan, managed: Starter) -> None:
    """Stage 3: controller manager, scheduler and kwok, until healthy and pods can be admitted."""
    cm = managed("kube-controller-manager", argv.controller_manager_argv(plan))
    sched = managed("kube-scheduler", argv.scheduler_argv(plan))
    # kwok also reads ~/.kwok/kwok.yaml when present: point its work dir at ours instead.
    kwok = managed(
        "kwok", argv.kwok_argv(plan), env={"KWOK_WORKDIR": str(plan.dir / "kwok-workdir")}
    )
    cm.wait_until(plan.healthz("cm"), timeout=COMPONENT_TIMEOUT, what="healthy")
    sched.wait_until(plan.healthz("sched"), timeout=COMPONENT_TIMEOUT, what="healthy")
    kwok.wait_until(plan.healthz("kwok"), timeout=COMPONENT_TIMEOUT, what="serving (/healthz)")
    # Pods are admitted only once their service account exists (controller manager's job).
    default_sa = f"{plan.server}/api/v1/namespaces/default/serviceaccounts/default"
    cm.wait_until(
        lambda: https_status(default_sa, plan.ca.cert, plan.admin) == 200,
        timeout=DEFAULT_SA_TIMEOUT,
        what="creating the default service account",
    )


def start_clusters_parallel(
    specs: Sequence[tuple[str, Sequence[JWTIssuer]]],
    ca: CertificateAuthority,
    run_dir: Path,
    tracing_endpoint: str | None = None,
) -> list[Cluster]:
    """Start several clusters at once (threads; each start is mostly waiting)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = [
            pool.submit(start_cluster, n, ca, run_dir, issuers, tracing_endpoint)
            for n, issuers in specs
        ]
        return [f.result() for f in futures]
