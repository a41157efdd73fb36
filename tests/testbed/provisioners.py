"""Non-Go components fetched into the cache; each registers in ``build.EXTRA_PROVISIONERS``."""

from __future__ import annotations

from tests.testbed import build
from tests.testbed import keycloak as _keycloak
from tests.testbed import nginx_server as _nginx
from tests.testbed import redis_server as _redis


def keycloak(force: bool = False) -> None:
    """Keycloak distribution (Maven Central, sha1-checked), Java >= 21, optimized server build."""
    _keycloak.provision(force)


def redis(force: bool = False) -> None:
    """redis-server from PATH, else Debian's redis-server package unpacked into the cache."""
    _redis.provision(force)


def nginx(force: bool = False) -> None:
    """nginx from PATH (the OPA bundle server of the policy reload tests), else Debian's."""
    _nginx.provision(force)


build.EXTRA_PROVISIONERS.extend([keycloak, redis, nginx])
