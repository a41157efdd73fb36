"""End-of-session credential leak scan (see ``tests/testbed/leak_scan.py``).

When the session made a run folder (``testbed_run_dir``), every log file under it and every tool
output the tests recorded (``leak_scan.record_output``) are scanned after all components have
stopped: any complete JWT or registered secret value fails the session, with ``file:line`` and a
value-free description (also written to ``<run>/leak-scan.txt``). ``KMG_LEAK_SCAN=0`` turns the
scan off (local debugging only).

* ``leak_registry``: the module :mod:`tests.testbed.leak_scan` (``register_secret``,
  ``record_output``) for tests that create secrets or receive tool outputs.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.testbed import leak_scan

_state: dict[str, Any] = {"run_dir": None, "hits": None}

# Credentials the testbed itself uses (demo/test-only values): none may reach a log line.
_KNOWN_SECRETS = {
    "tests.testbed.keycloak": ("GATEWAY_CLIENT_SECRET", "CLUSTER_B_CLIENT_SECRET"),
    "tests.testbed.mcp_gateway.stack": ("FACADE_CLIENT_SECRET",),
    "tests.gateway_plugins.token_exchange.running": ("FACADE_CLIENT_SECRET",),
}
_LITERAL_SECRETS = {"hunter2-very-secret": "Secret data of tests/mcp_backend workloads"}


def _register_known_secrets() -> None:
    import importlib

    for module_name, names in _KNOWN_SECRETS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, str):
                leak_scan.register_secret(value, f"{module_name}.{name}")
    for value, label in _LITERAL_SECRETS.items():
        leak_scan.register_secret(value, label)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: Any) -> Generator[Any]:
    result = yield
    if fixturedef.argname == "testbed_run_dir" and isinstance(result, Path):
        _state["run_dir"] = result
        _register_known_secrets()
    return result


@pytest.fixture(scope="session")
def leak_registry() -> ModuleType:
    """:mod:`tests.testbed.leak_scan`: ``register_secret(value, label)``, ``record_output``."""
    return leak_scan


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run_dir: Path | None = _state["run_dir"]
    if run_dir is None or os.environ.get("KMG_LEAK_SCAN", "1") == "0" or not run_dir.exists():
        return
    leak_scan.flush_outputs(run_dir)
    hits = leak_scan.scan_run_dir(run_dir)
    _state["hits"] = hits
    text = leak_scan.report(hits, limit=1000)
    (run_dir / "leak-scan.txt").write_text(text + "\n")
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    hits = _state["hits"]
    if hits is None:
        return
    if hits:
        terminalreporter.section("credential leak scan FAILED", red=True)
        terminalreporter.write_line(leak_scan.report(hits))
    else:
        terminalreporter.write_line(
            f"credential leak scan: 0 hits in the logs and tool outputs of {_state['run_dir']}"
        )
