"""Session fixtures every other testbed fixture builds on: run folder, CA, identity plan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed import paths, process
from tests.testbed.identity_plan import IdentityPlan, new_plan
from tests.testbed.pki import CertificateAuthority


@pytest.fixture(scope="session")
def testbed_run_dir() -> Iterator[Path]:
    """This session's folder for logs and state (kept after the run; see `.testbed/`)."""
    process.reap_stale()
    run_dir = paths.new_run_dir("pytest")
    yield run_dir
    process.stop_all()


@pytest.fixture(scope="session")
def testbed_ca(testbed_run_dir: Path) -> CertificateAuthority:
    """The CA that signs every serving certificate of the run (API servers, Keycloak, ...)."""
    return CertificateAuthority(testbed_run_dir / "pki")


@pytest.fixture(scope="session")
def identity_plan() -> IdentityPlan:
    """Keycloak's port and realm issuer URLs, fixed before Keycloak or any API server starts."""
    return new_plan()
