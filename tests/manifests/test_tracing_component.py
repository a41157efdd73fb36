"""``manifests/components/tracing`` turns tracing on in the three services of any overlay.

The component is built into an overlay of ``manifests/base`` with the testbed's kustomize (as a
user's overlay would include it), then the environment each Deployment gets is resolved from the
generated ConfigMap and read by each service's own settings loader: what reaches ``tracing`` is
the collector and ratio of the ConfigMap, also after the override recipe the component's
comment gives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kmg_common.settings import env_overrides
from kmg_common.tracing import TracingSettings
from tests.manifests import render
from tests.testbed import paths

COMPONENT = paths.REPO_ROOT / "manifests" / "components" / "tracing"
BASE = paths.REPO_ROOT / "manifests" / "base"
SERVICES = {"mcp-backend": "backend", "token-exchange": "token-exchange", "policy": "policy"}
DEFAULT_ENDPOINT = "http://otel-collector.observability:4318/v1/traces"
OTHER_ENDPOINT = "http://collector.monitoring:4318/v1/traces"


def _overlay(folder: Path, extra: str = "") -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{os.path.relpath(BASE, folder)}]\n"
        f"components: [{os.path.relpath(COMPONENT, folder)}]\n" + extra
    )
    return render.render(folder)


def _tracing_of(objs: list[dict[str, Any]], deployment: str) -> TracingSettings:
    """The ``tracing`` settings the service in ``deployment`` loads from its environment."""
    maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    deploy = next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment
    )
    (container,) = [
        c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == deployment
    ]
    environ: dict[str, str] = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None:
            environ[var["name"]] = maps[ref["name"]][ref["key"]]  # the generated (hashed) name
    section = env_overrides(SERVICES[deployment], environ).get("tracing")
    assert section is not None, f"{deployment}: no tracing setting in {sorted(environ)}"
    return TracingSettings.model_validate(section)


@pytest.mark.parametrize("deployment", list(SERVICES))
def test_each_service_loads_the_collector_from_the_component(
    tmp_path: Path, deployment: str
) -> None:
    tracing = _tracing_of(_overlay(tmp_path / "overlay"), deployment)
    assert tracing.endpoint == DEFAULT_ENDPOINT
    assert tracing.sampling_ratio == 1.0


@pytest.mark.parametrize("deployment", list(SERVICES))
def test_the_overlay_override_recipe_changes_every_service(tmp_path: Path, deployment: str) -> None:
    objs = _overlay(
        tmp_path / "overlay",
        "patches:\n"
        "  - target: {kind: ConfigMap, name: kmg-tracing}\n"
        "    patch: |-\n"
        f'      - {{op: replace, path: /data/endpoint, value: "{OTHER_ENDPOINT}"}}\n'
        '      - {op: replace, path: /data/sampling_ratio, value: "0.05"}\n',
    )
    tracing = _tracing_of(objs, deployment)
    assert tracing.endpoint == OTHER_ENDPOINT
    assert tracing.sampling_ratio == 0.05


def test_without_the_component_no_service_traces() -> None:
    """Control: the base alone sets no tracing variable (tracing stays off)."""
    for obj in render.render("base"):
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert not [n for n in names if "TRACING" in n], obj["metadata"]["name"]
