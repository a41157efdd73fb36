"""A real OPA server (``opa run --server``) for the testbed, on a free loopback port.

The binary is the one ``python -m tests.testbed.build`` built from the Go module proxy
(``tests/testbed/go/opa``). ``stop()`` / ``start()`` may be called again for outage tests: the
port stays the same.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import build, paths, process
from tests.testbed.ports import free_port

POLICIES_DIR = paths.REPO_ROOT / "policies"
FIXTURE_DIR = Path(__file__).resolve().parent / "opa_fixture"


def policy_dirs() -> list[Path]:
    """``policies/`` (when it holds Rego or data files) plus the testbed's own tiny fixture."""
    dirs = []
    if POLICIES_DIR.is_dir() and any(
        p.suffix in (".rego", ".json", ".yaml", ".yml") for p in POLICIES_DIR.rglob("*")
    ):
        dirs.append(POLICIES_DIR)
    dirs.append(FIXTURE_DIR)
    return dirs


@dataclass
class OpaServer(process.Supervised):
    run_dir: Path
    load: Sequence[Path] = field(default_factory=policy_dirs)
    port: int = field(default_factory=free_port)
    name: str = "opa"
    start_seconds: list[float] = field(default_factory=list)
    _proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(build.binary("opa")),
            "run",
            "--server",
            f"--addr=127.0.0.1:{self.port}",
            "--log-format=json",
            "--log-level=info",
            *(str(p) for p in self.load),
        ]

    def start(self, timeout: float = 30.0) -> OpaServer:
        if self._proc is not None and self._proc.running:
            return self
        took = self._start_process(
            self.name,
            self.command(),
            self.run_dir / f"{self.name}.log",
            ready=lambda: process.http_ok(f"{self.url}/health"),
            what="healthy",
            timeout=timeout,
        )
        self.start_seconds.append(took)
        return self

    def query(self, path: str, input_doc: Any = None) -> Any:
        """``POST /v1/data/<path>`` with ``input``; returns ``result`` (None when undefined)."""
        body = json.dumps({"input": input_doc} if input_doc is not None else {}).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback test URL
            f"{self.url}/v1/data/{path.strip('/')}",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read()).get("result")
        except urllib.error.HTTPError as err:
            raise RuntimeError(
                f"OPA query {path} failed: HTTP {err.code} {err.read()[:300]!r}"
            ) from None
