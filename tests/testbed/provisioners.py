"""Non-Go components fetched into the cache; each registers in ``build.EXTRA_PROVISIONERS``."""

from __future__ import annotations

from tests.testbed import build
from tests.testbed import keycloak as _keycloak


def keycloak(force: bool = False) -> None:
    """Keycloak distribution (Maven Central, sha1-checked), Java >= 21, optimized server build."""
    _keycloak.provision(force)


build.EXTRA_PROVISIONERS.append(keycloak)
