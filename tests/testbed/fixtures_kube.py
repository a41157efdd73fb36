"""Session fixtures for the real Kubernetes control planes (see ``tests/testbed/cluster.py``).

* ``cluster_a``: trusts Keycloak realm ``mcp`` (audiences ``CLUSTER_A_AUDIENCES``).
* ``cluster_b``: trusts only realm ``cluster-b`` (``CLUSTER_B_AUDIENCES``); started only by tests
  that ask for it. Both API servers export their spans to the session's ``trace_collector``
  (Jaeger, ``TracingConfiguration``: see ``tests/testbed/control_plane/config_files.py``).
* ``admin_client``: a kubernetes_asyncio ``ApiClient`` for cluster A as ``admin`` (system:masters).
* ``service_account_token``: ``await service_account_token(cluster, name=..., rules=...)`` returns a
  real TokenRequest token of a ServiceAccount with exactly the permissions asked for.
* ``kwok_nodes``: two fake nodes of cluster A, Ready, so workloads get Running pods (for cluster B:
  ``await cluster_b.ensure_fake_nodes()``).
* ``metrics_server``: the real metrics-server serving ``metrics.k8s.io`` on cluster A (started only
  by tests that ask for it; ready once it reports the kwok nodes' usage, ~20 s). Cluster B never
  has one: tests of the "metrics API not available" path use B.
* ``real_kubelet``: a real kubelet (with containerd) registered as node ``kubelet-node-0`` of
  cluster B (started only by tests that ask for it, ~2 s): the node proxy's ``/logs/`` and
  ``/stats/summary`` answer as on a real node. Tainted NoSchedule, never Ready (no CNI): no pod
  runs there. See ``tests/testbed/kubelet.py``.

Keycloak need not be running when a cluster starts (see ``Cluster.wait_token_accepted``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes_asyncio import client as k8s

from tests.testbed.cluster import Cluster, JWTIssuer
from tests.testbed.control_plane.start import start_cluster
from tests.testbed.identity_plan import (
    CLUSTER_A_AUDIENCES,
    CLUSTER_B_AUDIENCES,
    REALM_CLUSTER_B,
    REALM_MCP,
    IdentityPlan,
)
from tests.testbed.jaeger import Jaeger
from tests.testbed.kubelet import Kubelet, start_kubelet
from tests.testbed.metrics_server import MetricsServer, start_metrics_server
from tests.testbed.pki import CertificateAuthority

CLUSTER_A = "cluster-a"
CLUSTER_B = "cluster-b"
FAKE_NODE_COUNT = 2


def cluster_a_issuers(plan: IdentityPlan, ca: CertificateAuthority) -> list[JWTIssuer]:
    """Cluster A trusts the users' realm; Keycloak serves HTTPS with a certificate from ``ca``."""
    return [JWTIssuer(url=plan.issuer(REALM_MCP), audiences=CLUSTER_A_AUDIENCES, ca_file=ca.cert)]


def cluster_b_issuers(plan: IdentityPlan, ca: CertificateAuthority) -> list[JWTIssuer]:
    """Cluster B trusts only its own realm (tokens reach it through the cross-domain flow)."""
    return [
        JWTIssuer(url=plan.issuer(REALM_CLUSTER_B), audiences=CLUSTER_B_AUDIENCES, ca_file=ca.cert)
    ]


@pytest.fixture(scope="session")
def cluster_a(
    testbed_ca: CertificateAuthority,
    testbed_run_dir: Path,
    identity_plan: IdentityPlan,
    trace_collector: Jaeger,
) -> Iterator[Cluster]:
    """Cluster A: etcd, kube-apiserver, controller manager, scheduler and kwok, all running."""
    cluster = start_cluster(
        CLUSTER_A,
        testbed_ca,
        testbed_run_dir,
        cluster_a_issuers(identity_plan, testbed_ca),
        tracing_endpoint=trace_collector.otlp_grpc_endpoint,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster_b(
    testbed_ca: CertificateAuthority,
    testbed_run_dir: Path,
    identity_plan: IdentityPlan,
    trace_collector: Jaeger,
) -> Iterator[Cluster]:
    """Cluster B: fully independent of A (own etcd, ports, client CA, service-account key)."""
    cluster = start_cluster(
        CLUSTER_B,
        testbed_ca,
        testbed_run_dir,
        cluster_b_issuers(identity_plan, testbed_ca),
        tracing_endpoint=trace_collector.otlp_grpc_endpoint,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
async def admin_client(cluster_a: Cluster) -> AsyncIterator[k8s.ApiClient]:
    """Cluster A's admin ``ApiClient`` (client certificate, O=system:masters)."""
    async with cluster_a.admin_client() as api:
        yield api


class ServiceAccountTokenFactory(Protocol):
    def __call__(
        self,
        cluster: Cluster,
        *,
        name: str,
        namespace: str = "default",
        rules: Sequence[Mapping[str, Any]] | None = None,
        cluster_role: str | None = None,
        role: str | None = None,
        cluster_wide: bool = False,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> Awaitable[str]: ...


@pytest.fixture(scope="session")
def service_account_token() -> ServiceAccountTokenFactory:
    """``await service_account_token(cluster, name=..., rules=[...])`` -> a real bearer token.

    See ``Cluster.service_account_token`` for the permission options.
    """

    def factory(cluster: Cluster, **kwargs: Any) -> Awaitable[str]:
        return cluster.service_account_token(**kwargs)

    return factory


@pytest.fixture(scope="session")
async def kwok_nodes(cluster_a: Cluster) -> list[str]:
    """Names of cluster A's fake nodes, registered and Ready."""
    return await cluster_a.ensure_fake_nodes(FAKE_NODE_COUNT)


@pytest.fixture(scope="session")
def metrics_server(
    cluster_a: Cluster, kwok_nodes: list[str], testbed_ca: CertificateAuthority
) -> Iterator[MetricsServer]:
    """metrics-server on cluster A, registered as ``v1beta1.metrics.k8s.io``, reporting the kwok
    nodes' usage (pods show up after two scrapes of 10 s once they run)."""
    server = start_metrics_server(cluster_a, testbed_ca, nodes=kwok_nodes)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_kubelet(cluster_b: Cluster, testbed_ca: CertificateAuthority) -> Iterator[Kubelet]:
    """A real kubelet + containerd, node ``kubelet-node-0`` of cluster B (not of A: A's
    metrics-server would scrape it), reachable through B's node proxy."""
    kubelet = start_kubelet(cluster_b, testbed_ca)
    try:
        yield kubelet
    finally:
        kubelet.stop()
