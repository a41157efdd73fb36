"""The MCP Gateway's own install: its Helm chart of the release the testbed builds, rendered with
the testbed's helm and ``manifests/kind/mcp-gateway-values.yaml``.

The chart comes from ``build.share_dir("mcp-gateway") / "charts" / "mcp-gateway"`` (the release's
source tree, see ``tests/testbed/build.py``), so what Kind installs, what the manifest tests
validate and what the controller test runs are the same release. ``helm template`` (no cluster
needed) gives the objects; the Kind targets apply exactly this output.

The chart in the v0.9.0 source still says ``appVersion: 0.8.0``, and its image tags default to the
appVersion: :func:`render` pins both images to :data:`versions.MCP_GATEWAY` (the tags the
release's own kustomize install uses), so a cluster never runs a controller older than its CRDs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, paths, versions

RELEASE = "mcp-gateway"
NAMESPACE = "mcp-system"
VALUES = paths.REPO_ROOT / "manifests" / "kind" / "mcp-gateway-values.yaml"
CONTROLLER_IMAGE = "ghcr.io/kuadrant/mcp-controller"
BROKER_IMAGE = "ghcr.io/kuadrant/mcp-gateway"


class RenderError(RuntimeError):
    """helm refused the chart or the values; the message carries its error output."""


def chart_dir() -> Path:
    return build.share_dir("mcp-gateway") / "charts" / "mcp-gateway"


def helm_template(*, include_crds: bool, values: Path = VALUES) -> str:
    """``helm template`` of the chart (no test hooks) as YAML text."""
    with tempfile.TemporaryDirectory(prefix="kmg-helm-") as home:
        env = dict(
            os.environ,
            HELM_CACHE_HOME=f"{home}/cache",
            HELM_CONFIG_HOME=f"{home}/config",
            HELM_DATA_HOME=f"{home}/data",
        )
        argv = [
            str(build.binary("helm")),
            "template",
            RELEASE,
            str(chart_dir()),
            "--namespace",
            NAMESPACE,
            "--skip-tests",
            "--values",
            str(values),
            "--set",
            f"image.tag={versions.MCP_GATEWAY}",
            "--set",
            f"imageController.tag={versions.MCP_GATEWAY}",
        ]
        if include_crds:
            argv.append("--include-crds")
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=120, check=False
        )
    if proc.returncode != 0:
        raise RenderError(f"helm template {chart_dir()} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def render(*, values: Path = VALUES) -> list[dict[str, Any]]:
    """The chart's objects (controller, its RBAC, the MCPGatewayExtension, ...), no CRDs."""
    return _objects(helm_template(include_crds=False, values=values))


def render_crds(*, values: Path = VALUES) -> list[dict[str, Any]]:
    """The CRDs the chart installs (``crds/``: the release's three mcp.kuadrant.io CRDs)."""
    everything = _objects(helm_template(include_crds=True, values=values))
    return [o for o in everything if o.get("kind") == "CustomResourceDefinition"]


def controller_deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's controller Deployment."""
    (deploy,) = [
        o
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("controller")
    ]
    return deploy
