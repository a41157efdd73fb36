"""The Helm chart ``charts/kube-mcp-gateway`` through the testbed's helm binary.

Every call runs ``build.binary("helm")`` (the pinned helm the backend's helm tools use) with its
cache, config and data homes in a temporary folder, so nothing outside the test's state is read
or written. ``--kube-version`` names the testbed's Kubernetes: a helm built from the Go module
(not by helm's Makefile) would otherwise assume v1.20 and refuse the chart's ``kubeVersion``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, paths, versions

CHART = paths.REPO_ROOT / "charts" / "kube-mcp-gateway"
EXAMPLES_DIR = CHART / "examples"
RELEASE = "kmg"
NAMESPACE = "kmg-system"
KUBE_VERSION = versions.KUBERNETES.lstrip("v")

Obj = dict[str, Any]


def examples() -> list[Path]:
    """The documented values files (README: "Helm chart")."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


class HelmError(RuntimeError):
    """helm exited non-zero; ``stderr`` keeps what it said."""

    def __init__(self, argv: Sequence[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(argv)} failed:\n{stderr.strip()}")
        self.stderr = stderr


def helm(argv: Sequence[str], *, kubeconfig: Path | None = None, timeout: float = 300) -> str:
    """Run helm; its stdout. Raises :class:`HelmError` with stderr on failure."""
    with tempfile.TemporaryDirectory(prefix="kmg-helm-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))} | {
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }
        full = [*argv]
        if kubeconfig is not None:
            full += ["--kubeconfig", str(kubeconfig)]
        proc = subprocess.run(
            [str(build.binary("helm")), *full],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise HelmError(argv, proc.stderr)
    return proc.stdout


def value_args(values: Sequence[Path] = (), set_json: Mapping[str, Any] | None = None) -> list[str]:
    """``-f`` for each file, then ``--set-json key=value`` for each override."""
    out: list[str] = []
    for file in values:
        out += ["--values", str(file)]
    for key, value in (set_json or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template_yaml(
    values: Sequence[Path] = (),
    set_json: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> str:
    return helm(
        [
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *value_args(values, set_json),
        ]
    )


def template(
    values: Sequence[Path] = (),
    set_json: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> list[Obj]:
    """The objects ``helm template`` renders, in helm's install order."""
    text = template_yaml(values, set_json, namespace=namespace, release=release)
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def lint(values: Sequence[Path] = ()) -> str:
    return helm(
        ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *value_args(values)]
    )
