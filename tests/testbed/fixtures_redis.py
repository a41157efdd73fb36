"""Session fixtures for shared state: a real Redis and a real static file server (nginx).

* ``redis_server``: one :class:`~tests.testbed.redis_server.RedisServer` for the session, with a
  password. ``url`` (no credentials) plus ``password`` / ``write_password(path)`` for services
  that take the secret separately; ``connection_string(db)`` (``redis://:<password>@host:port/db``)
  for programs that take one string, such as the MCP Gateway broker's
  ``--cache-connection-string``. Tests that stop or freeze it (``stop()``/``start()``,
  ``pause()``/``resume()``) must bring it back before they end; tests that need isolation use
  their own database number or key prefix.
* ``static_server``: ``static_server(root)`` starts an nginx serving ``root`` (e.g. OPA
  bundles); stopped at the end of the test.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed import leak_scan
from tests.testbed.fixtures_identity import record_startup
from tests.testbed.nginx_server import NginxStaticServer
from tests.testbed.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(testbed_run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(testbed_run_dir).start()
    leak_scan.register_secret(server.password, "the testbed Redis password")
    try:
        yield server
    finally:
        if server.running:
            with contextlib.suppress(OSError):
                server.resume()  # a test that failed while it was frozen
        server.stop()
        record_startup(
            testbed_run_dir,
            "redis",
            source=server.source,
            seconds=[round(s, 3) for s in server.start_seconds],
        )


StaticServerFactory = Callable[[Path], NginxStaticServer]
_NGINX_SEQ = itertools.count(1)  # unique log/config folders across the session


@pytest.fixture
def static_server(testbed_run_dir: Path) -> Iterator[StaticServerFactory]:
    started: list[NginxStaticServer] = []

    def factory(root: Path) -> NginxStaticServer:
        server = NginxStaticServer(testbed_run_dir, root, name=f"nginx-{next(_NGINX_SEQ)}").start()
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()
