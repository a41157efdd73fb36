"""The deployment's workloads: every kustomization builds, the base has each service complete
(Deployment, Service, ServiceAccount, generated config), every pod meets the "restricted" Pod
Security profile, and the Dockerfile builds one non-root image per service. The rendered objects
go through the real API server in ``test_api_server_admission.py``.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.manifests import render
from tests.manifests.rendered_objects import (
    SERVICE_NAMESPACE,
    SERVICES,
    Obj,
    all_containers,
    config_of,
    deployments,
    find,
    generated,
)
from tests.testbed import paths


# -- builds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", render.TARGETS)
def test_every_kustomization_builds(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    assert objs, f"{target} rendered nothing"
    for obj in objs:
        assert obj.get("apiVersion"), obj
        assert obj.get("kind"), obj
        assert obj["metadata"].get("name"), obj


def test_base_has_every_service_complete(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["base"]
    for service in SERVICES:
        deploy = find(objs, "Deployment", service, SERVICE_NAMESPACE)
        svc = find(objs, "Service", service, SERVICE_NAMESPACE)
        find(objs, "ServiceAccount", service, SERVICE_NAMESPACE)
        cfg = generated(objs, "ConfigMap", f"{service}-config")
        pod = deploy["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == service
        # the Deployment mounts the generated (hash-suffixed) ConfigMap, so config changes roll it
        assert cfg["metadata"]["name"] in [
            v.get("configMap", {}).get("name") for v in pod["volumes"]
        ]
        # Service selects exactly this Deployment's pods
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert deploy["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["http"]["targetPort"] == "http"
        assert ports["metrics"]["targetPort"] == "http"
        main = next(c for c in pod["containers"] if c["name"] == service)
        assert main["image"] == f"kube-mcp-gateway/{service}:dev"
        http = next(p for p in main["ports"] if p["name"] == "http")
        # the service listens where the probes and the Service point
        assert config_of(objs, service)["port"] == http["containerPort"]
        assert config_of(objs, service)["host"] == "0.0.0.0"  # noqa: S104 - pod network


# -- pod security ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [t for t in render.TARGETS if t not in ("gateway",)])
def test_pods_are_restricted(rendered: dict[str, list[Obj]], target: str) -> None:
    for deploy in deployments(rendered[target]):
        name = deploy["metadata"]["name"]
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["securityContext"].get("runAsUser", 0) != 0, name
        assert pod["automountServiceAccountToken"] is False, f"{name}: token must not be mounted"
        assert not pod.get("hostNetwork"), name
        assert not pod.get("hostPID"), name
        for c in all_containers(pod):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert sc.get("privileged") is not True, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            if name in SERVICES:
                assert sc["readOnlyRootFilesystem"] is True, where
        for c in pod["containers"]:
            assert c.get("livenessProbe"), f"{name}/{c['name']}"
            assert c.get("readinessProbe"), f"{name}/{c['name']}"
        if name in SERVICES:
            main = next(c for c in pod["containers"] if c["name"] == name)
            assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_dockerfile_builds_one_nonroot_image_per_service(rendered: dict[str, list[Obj]]) -> None:
    text = (paths.REPO_ROOT / "Dockerfile").read_text()
    stages = {
        name: parent for parent, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)
    }
    scripts = console_scripts()
    for service, script in zip(
        SERVICES, ("mcp-backend", "mcp-token-exchange", "mcp-policy"), strict=True
    ):
        assert stages.get(service) == "runtime", f"no image target {service}"
        block = text.split(f"AS {service}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f'ENTRYPOINT ["{script}"]' in block
        assert script in scripts
        assert "USER" not in block, "service stages inherit the non-root user"
    runtime = text.split("AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    backend = text.split("AS mcp-backend\n", 1)[1].split("\nFROM ", 1)[0]
    assert "/usr/local/bin/helm" in backend
    assert "COPY tests/testbed/go/helm/ " in text  # the testbed's pinned helm
    assert (paths.REPO_ROOT / "tests" / "testbed" / "go" / "helm" / "go.sum").is_file()
    for deploy in deployments(rendered["base"]):
        uid = deploy["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        assert uid == 10001, "pods run as the images' user"


def console_scripts() -> set[str]:

    data = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())
    return set(data["project"]["scripts"])
