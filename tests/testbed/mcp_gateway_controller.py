"""The real MCP Gateway controller (``github.com/Kuadrant/mcp-gateway``'s ``cmd``, built by
``make testbed``) against a testbed API server, installed as the release's Helm chart installs it.

:func:`install` puts on the cluster what the controller needs and the chart brings: the CRDs it
watches (the release's three ``mcp.kuadrant.io`` CRDs, Gateway API, Istio's ``EnvoyFilter``: the
manifest tests' set, :func:`tests.manifests.crds.load_crds`), the Kind flow's Gateway and
namespaces (``manifests/kind/gateway.yaml``) and the chart's objects rendered with the Kind values
(``tests/manifests/mcp_gateway_install.py``): ServiceAccount, ClusterRole + binding, the
MCPGatewayExtension, the ReferenceGrant. All but the chart's controller Deployment, which
:class:`GatewayController` runs here as a process, playing the kubelet's part for that pod
(``tests/testbed/pod_process.py``): the container's command (``./mcp_controller`` → the built
binary) and environment (``NAMESPACE`` from its ``fieldRef``), and as identity a TokenRequest token
of the pod's ServiceAccount, so the chart's ClusterRole is all it may do.

The controller binds its health probe to ``:8081`` and its metrics to ``:8082`` (hard-coded in
``cmd/main.go``, no flag), so it runs in a private network namespace (``tests/testbed/netns.py``):
nothing of it listens on the machine, and two test sessions cannot collide. The API server's port
is bridged in (the kubeconfig is unchanged), the health port out to a free port. Leader election is
off in that release (one replica).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes_asyncio import client as k8s

from tests.manifests import crds, mcp_gateway_install
from tests.manifests.kube_apply import KubeApplier
from tests.testbed import build, netns, paths, pod_process, process
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

START_TIMEOUT = 60.0
TOKEN_SECONDS = 6 * 3600
HEALTH_PORT = 8081  # cmd/main.go: HealthProbeBindAddress ":8081"
IMAGE_EXECUTABLE = "./mcp_controller"  # the chart's container command
KIND_GATEWAY = paths.REPO_ROOT / "manifests" / "kind" / "gateway.yaml"

Obj = dict[str, Any]


def kind_gateway_objects() -> list[Obj]:
    """``manifests/kind/gateway.yaml``: the namespaces and the Gateway of the Kind flow."""
    text = KIND_GATEWAY.read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


async def install(cluster: Cluster) -> list[Obj]:
    """CRDs, the Kind Gateway, the chart's objects but the controller Deployment (applied for
    real); returns the chart's rendered objects (the Deployment included)."""
    chart = await asyncio.to_thread(mcp_gateway_install.render)
    deployment = mcp_gateway_install.controller_deployment(chart)
    async with KubeApplier(cluster) as api:
        await api.install_crds(await asyncio.to_thread(crds.load_crds))
        for obj in [*kind_gateway_objects(), *chart]:
            if obj is not deployment:
                await api.apply(obj, dry_run=False)
    return chart


def _write_kubeconfig(path: Path, cluster: Cluster, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster.name,
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_file),
                },
            }
        ],
        "users": [{"name": "mcp-gateway-controller", "user": {"token": token}}],
        "contexts": [
            {
                "name": cluster.name,
                "context": {"cluster": cluster.name, "user": "mcp-gateway-controller"},
            }
        ],
        "current-context": cluster.name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


async def service_account_token(cluster: Cluster, namespace: str, name: str) -> str:
    """A TokenRequest token of an existing ServiceAccount (API server audience)."""
    async with cluster.admin_client() as api:
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        )
        answer = await k8s.CoreV1Api(api).create_namespaced_service_account_token(
            name, namespace, request
        )
    token = answer.status.token
    if not isinstance(token, str) or not token:
        raise process.ComponentError(f"TokenRequest for {namespace}/{name} gave no token")
    return token


@dataclass
class GatewayController(process.Supervised):
    """The controller process of the chart's Deployment (log: ``mcp-gateway-controller.log``)."""

    cluster: Cluster
    deployment: Obj
    log_dir: Path
    health_port: int = field(default_factory=free_port)
    pod: pod_process.PodProcess | None = None
    kubeconfig: Path | None = None
    socket_dir: Path | None = None
    _proc: process.ManagedProcess | None = None

    @property
    def readyz_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/readyz"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "mcp-gateway-controller.log"

    async def prepare(self) -> None:
        """Identity (token of the pod's ServiceAccount) and the process equivalent of the pod."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pod_spec = self.deployment["spec"]["template"]["spec"]
        namespace = self.deployment["metadata"]["namespace"]
        token = await service_account_token(self.cluster, namespace, pod_spec["serviceAccountName"])
        self.kubeconfig = _write_kubeconfig(self.log_dir / "kubeconfig", self.cluster, token)
        mapping = pod_process.PodMapping(
            executables={IMAGE_EXECUTABLE: build.binary("mcp-gateway-controller")}
        )
        async with self.cluster.admin_client() as api:
            self.pod = await pod_process.materialize(api, self.deployment, mapping, self.log_dir)

    def start(self, timeout: float = START_TIMEOUT) -> GatewayController:
        """Start (after :meth:`prepare`) and wait until ``/readyz`` answers."""
        if self._proc is not None and self._proc.running:
            return self
        if self.pod is None or self.kubeconfig is None:
            raise process.ComponentError("GatewayController.prepare() must run before start()")
        api_port = urlsplit(self.cluster.server).port
        assert api_port is not None
        # short: Unix socket paths are limited to 108 bytes, the run folder may be deep
        self.socket_dir = Path(tempfile.mkdtemp(prefix="kmg-ctl-"))
        argv = netns.command(
            self.socket_dir,
            self.pod.argv,
            imports=[api_port],
            exports=[(HEALTH_PORT, self.health_port)],
        )
        env = {
            **self.pod.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(paths.REPO_ROOT),
        }
        self._start_process(
            "mcp-gateway-controller",
            argv,
            self.log_path,
            env=env,
            ready=lambda: process.http_ok(self.readyz_url),
            what=f"ready ({self.readyz_url})",
            timeout=timeout,
        )
        return self

    def stop(self) -> None:
        super().stop()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
