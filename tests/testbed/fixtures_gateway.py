"""Session fixtures ``local_gateway`` and ``replicated_gateway``: the local MCP gateway (Envoy +
the real MCP Gateway broker/router v0.9.0) in front of our services (two backends, token exchange,
policy), next to the session's Keycloak and clusters A and B.

* ``local_gateway``: one broker/router, sessions in its memory (what most e2e tests use).
* ``replicated_gateway``: a second stack (``<run>/gateway-replicas/``) with TWO broker/router
  replicas behind Envoy's round robin, sharing their sessions through the session's Redis
  (database :data:`BROKER_SESSION_DB`); started only when a test asks for it.

Started once per session (see ``tests/testbed/mcp_gateway/start.py``); tests that stop a service
(fault injection) must start it again before they end: ``local_gateway.services[name].start()``;
tests that switch the replicas' session store (``set_session_store``) must switch it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.jaeger import Jaeger
from tests.testbed.keycloak import Keycloak
from tests.testbed.mcp_gateway.stack import LocalGateway
from tests.testbed.mcp_gateway.start import start_gateway
from tests.testbed.pki import CertificateAuthority
from tests.testbed.redis_server import RedisServer

BROKER_SESSION_DB = 2  # the testbed Redis' database for gateway sessions (token exchange: 0)


@pytest.fixture(scope="session")
def local_gateway(
    testbed_run_dir: Path,
    testbed_ca: CertificateAuthority,
    keycloak: Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
    trace_collector: Jaeger,
) -> Iterator[LocalGateway]:
    """The running gateway; ``local_gateway.mcp_url`` is Envoy's ``/mcp``. Our services and Envoy
    export their spans to the session's ``trace_collector``."""
    gateway = start_gateway(
        testbed_run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        ca_file=testbed_ca.cert,
        trace_collector=trace_collector,
    )
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def replicated_gateway(
    testbed_run_dir: Path,
    testbed_ca: CertificateAuthority,
    keycloak: Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
    redis_server: RedisServer,
) -> Iterator[LocalGateway]:
    """Two broker/router replicas on Redis; ``replicated_gateway.brokers`` names them."""
    redis_server.client(db=BROKER_SESSION_DB).flushdb()
    gateway = start_gateway(
        testbed_run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        ca_file=testbed_ca.cert,
        subdir="gateway-replicas",
        broker_replicas=2,
        session_store=redis_server.connection_string(BROKER_SESSION_DB),
    )
    try:
        yield gateway
    finally:
        gateway.stop()
