"""The non-Go components ``python -m tests.testbed.build`` fetches into the cache, by name (the
names ``--only`` takes). Each provisioner is called with ``force``, is idempotent and caches like
the Go components. This module does not import ``build``: ``build`` reads the list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tests.testbed import keycloak, nginx_server, redis_server

PROVISIONERS: Mapping[str, Callable[[bool], object]] = {
    # Keycloak distribution (Maven Central, sha1-checked), Java >= 21, optimized server build
    "keycloak": keycloak.provision,
    # redis-server from PATH, else Debian's redis-server package unpacked into the cache
    "redis": redis_server.provision,
    # nginx from PATH (the OPA bundle server of the policy reload tests), else Debian's
    "nginx": nginx_server.provision,
}
