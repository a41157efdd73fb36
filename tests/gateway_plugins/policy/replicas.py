"""Several policy-service replicas as real processes (``mcp-policy serve``), as pods run them.

Used by ``test_replicas.py`` and ``bench/scenario_replicas.py``: every replica reads the same
settings file and the same watched policy folder (a ConfigMap volume mounted in each pod).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway_plugins.policy.config import PolicySettings
from tests.testbed import paths, process
from tests.testbed.ports import free_port


@dataclass
class PolicyReplica:
    name: str
    port: int
    proc: process.ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_policy_replicas(
    settings: PolicySettings, run_dir: Path, count: int, *, label: str
) -> list[PolicyReplica]:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / f"{label}.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    replicas = []
    for index in range(count):
        port = free_port()
        name = f"{label}-{index}"
        argv = [sys.executable, "-m", "gateway_plugins.policy.cli", "serve"]
        argv += ["--config", str(config), "--port", str(port), "--log-level", "info"]
        proc = process.ManagedProcess(
            name, argv, run_dir / f"{name}.log", cwd=paths.REPO_ROOT
        ).start()
        replicas.append(PolicyReplica(name, port, proc))
    for replica in replicas:
        replica.proc.wait_until(
            lambda r=replica: process.http_ok(f"{r.url}/readyz"), timeout=60, what="ready"
        )
    return replicas


def stop_policy_replicas(replicas: list[PolicyReplica]) -> None:
    for replica in replicas:
        replica.proc.stop()
