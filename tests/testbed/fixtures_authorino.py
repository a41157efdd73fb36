"""Session fixture ``authorino_gateway``: the local gateway with the real Authorino as its auth
layer, configured from the Kuadrant overlay (``tests/testbed/mcp_gateway/authorino_stack.py``).

Started once per session, only when a test asks for it; tests that stop a service (fault
injection) must start it again before they end: ``authorino_gateway.services[name].start()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed import leak_scan
from tests.testbed.cluster import Cluster
from tests.testbed.keycloak import Keycloak
from tests.testbed.mcp_gateway.authorino_stack import (
    FACADE_CLIENT_SECRET,
    AuthorinoGateway,
    start_authorino_gateway,
)
from tests.testbed.pki import CertificateAuthority


@pytest.fixture(scope="session")
def authorino_gateway(
    testbed_run_dir: Path,
    testbed_ca: CertificateAuthority,
    keycloak: Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
) -> Iterator[AuthorinoGateway]:
    """The running gateway; ``authorino_gateway.mcp_url`` is Envoy's ``/mcp``."""
    leak_scan.register_secret(FACADE_CLIENT_SECRET, "authorino_stack.FACADE_CLIENT_SECRET")
    gateway = start_authorino_gateway(
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
        (gateway.gateway.gateway_dir / "startup.json").write_text(
            json.dumps(gateway.startup_seconds, indent=1) + "\n"
        )
