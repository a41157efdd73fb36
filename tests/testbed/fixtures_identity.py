"""Session fixtures for identity and policy: a real Keycloak (HTTPS, realms ``mcp`` and
``cluster-b``), a real OPA server and a factory of real Envoy proxies.

* ``keycloak_launched``: Keycloak's process started, not yet ready. Fixtures that start slow
  components of their own (the API servers) may depend on it so that both starts overlap.
* ``keycloak``: the ready :class:`~tests.testbed.keycloak.Keycloak` (``url``, ``ca_file``,
  ``issuer(realm)``, ``token_url(realm)``, ``user_token()``/``auser_token()``, ``admin_token()``,
  ``exchange()``, ``jwt_bearer()``, ``gateway_client_id``/``gateway_client_secret``,
  ``stop()``/``start()`` on the same port and data for outage tests).
* ``opa_server``: ``opa run --server`` loading ``policies/`` and ``tests/testbed/opa_fixture/``.
* ``envoy``: ``envoy(template=..., **values)`` starts an Envoy from a template with free ports;
  every Envoy a test started is stopped at the end of that test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import envoy_proxy
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import IdentityPlan
from tests.testbed.opa_server import OpaServer
from tests.testbed.pki import CertificateAuthority


def record_startup(run_dir: Path, component: str, **fields: object) -> None:
    """Append start measurements to ``<run>/startup.jsonl`` (read by reports, never asserted)."""
    with (run_dir / "startup.jsonl").open("a") as out:
        out.write(json.dumps({"component": component, **fields}) + "\n")


class SessionKeycloak(kc.Keycloak):
    """:class:`Keycloak` plus async wrappers (blocking HTTP runs in a worker thread)."""

    async def auser_token(self, username: str, password: str, **kwargs: Any) -> str:
        return await asyncio.to_thread(self.user_token, username, password, **kwargs)

    async def aadmin_token(self) -> str:
        return await asyncio.to_thread(self.admin_token)

    async def aexchange(self, subject_token: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.exchange, subject_token, **kwargs)

    async def ajwt_bearer(self, assertion: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.jwt_bearer, assertion, **kwargs)


@pytest.fixture(scope="session")
def keycloak_launched(
    testbed_run_dir: Path, testbed_ca: CertificateAuthority, identity_plan: IdentityPlan
) -> Iterator[SessionKeycloak]:
    """Keycloak's process, launched but maybe not ready yet (see module docstring)."""
    server = SessionKeycloak(
        run_dir=testbed_run_dir,
        plan=identity_plan,
        tls=testbed_ca.issue("keycloak"),
        ca_file=testbed_ca.cert,
    )
    server.launch()
    try:
        yield server
    finally:
        rss = server.rss_mib()
        server.stop()
        record_startup(
            testbed_run_dir,
            "keycloak",
            starts=[{"seconds": round(s.seconds, 1), "rss_mib": s.rss_mib} for s in server.starts],
            rss_mib_at_end=rss,
        )


@pytest.fixture(scope="session")
def keycloak(keycloak_launched: SessionKeycloak) -> SessionKeycloak:
    """The ready Keycloak (realms ``mcp`` and ``cluster-b`` imported)."""
    return keycloak_launched.wait_ready()


@pytest.fixture(scope="session")
def opa_server(testbed_run_dir: Path) -> Iterator[OpaServer]:
    server = OpaServer(testbed_run_dir).start()
    try:
        yield server
    finally:
        server.stop()
        record_startup(testbed_run_dir, "opa", seconds=[round(s, 3) for s in server.start_seconds])


EnvoyFactory = Callable[..., envoy_proxy.EnvoyProxy]
_ENVOY_SEQ = itertools.count(1)  # unique log/config names across the session


@pytest.fixture
def envoy(testbed_run_dir: Path) -> Iterator[EnvoyFactory]:
    """``envoy(template=PROXY_TEMPLATE, name="envoy", **placeholders)`` -> a ready EnvoyProxy."""
    started: list[envoy_proxy.EnvoyProxy] = []

    def factory(
        template: Path | str = envoy_proxy.PROXY_TEMPLATE, *, name: str = "envoy", **values: object
    ) -> envoy_proxy.EnvoyProxy:
        proxy = envoy_proxy.start_envoy(
            testbed_run_dir, template, name=f"{name}-{next(_ENVOY_SEQ)}", **values
        )
        started.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in started:
            proxy.stop()
            record_startup(
                testbed_run_dir, proxy.name, seconds=[round(s, 3) for s in proxy.start_seconds]
            )
