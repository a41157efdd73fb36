"""Session fixture ``local_gateway``: the local MCP gateway (Envoy + the real MCP Gateway
broker/router v0.9.0) in front of our services (two backends, token exchange, policy), next to the
session's Keycloak and clusters A and B.

Started once per session (see ``tests/testbed/mcp_gateway/stack.py``); tests that stop a service
(fault injection) must start it again before they end: ``local_gateway.services[name].start()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.keycloak import Keycloak
from tests.testbed.mcp_gateway.stack import LocalGateway, start_gateway
from tests.testbed.pki import CertificateAuthority


@pytest.fixture(scope="session")
def local_gateway(
    testbed_run_dir: Path,
    testbed_ca: CertificateAuthority,
    keycloak: Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
) -> Iterator[LocalGateway]:
    """The running gateway; ``local_gateway.mcp_url`` is Envoy's ``/mcp``."""
    gateway = start_gateway(
        testbed_run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        ca_file=testbed_ca.cert,
    )
    try:
        yield gateway
    finally:
        gateway.stop()
