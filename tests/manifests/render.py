"""Render the kustomizations under ``manifests/`` with the testbed's kustomize binary.

``python -m tests.manifests.render manifests/overlays/kind`` prints the objects as YAML (the Kind
Makefile targets pipe it into ``kubectl apply``). Kustomize is built from
``sigs.k8s.io/kustomize/kustomize/v5`` by ``make testbed`` (wrapper ``tests/testbed/go/kustomize``).

Every build runs with ``--load-restrictor LoadRestrictionsNone``: the Keycloak component imports
the realm files of ``manifests/keycloak/`` (the files the testbed imports) from outside its folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, paths

MANIFESTS = paths.REPO_ROOT / "manifests"

# Every kustomization a user can build, relative to manifests/.
TARGETS: tuple[str, ...] = (
    "base",
    "base/mcp-backend",
    "base/token-exchange",
    "base/policy",
    "keycloak-server",
    "redis",
    "gateway",
    "overlays/kuadrant",
    "overlays/istio-ext-authz",
    "overlays/kind",
    "observability",
)


class RenderError(RuntimeError):
    """kustomize refused a kustomization; the message carries its error output."""


def kustomize_binary() -> Path:
    return build.binary("kustomize")


def build_yaml(target: str | Path) -> str:
    """``kustomize build`` of ``manifests/<target>`` (or an absolute folder) as YAML text."""
    folder = Path(target) if Path(target).is_absolute() else MANIFESTS / target
    proc = subprocess.run(
        [
            str(kustomize_binary()),
            "build",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(f"kustomize build {folder} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def render(target: str | Path) -> list[dict[str, Any]]:
    """The objects of one kustomization, in kustomize's output order."""
    return [doc for doc in yaml.safe_load_all(build_yaml(target)) if isinstance(doc, dict)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.manifests.render <kustomization folder>", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(build_yaml(Path(args[0]).resolve()))
    except (RenderError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
