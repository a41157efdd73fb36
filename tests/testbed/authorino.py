"""The real Authorino (``github.com/kuadrant/authorino``, built by ``make testbed``) against a
testbed API server: the AuthConfig CRD installed, ``authorino server`` watching one namespace.

:func:`install` puts the AuthConfig CRD (from ``tests/manifests/crds.py``'s cache, the same file
the manifest tests validate against) and Authorino's namespace on a cluster;
:class:`Authorino` starts the server as a managed process with the cluster's admin kubeconfig;
:func:`apply_authconfigs` applies AuthConfigs (and the Secrets they reference) and waits until
Authorino reports each one ready in its status.

Ports, all free ones: gRPC ext_authz (the Envoy filter's target), health probes and metrics on
127.0.0.1. Authorino binds its gRPC listener as ``:<port>`` (all interfaces; v0.20.0 has no
address flag); its raw-HTTP authorization and wristband-OIDC servers are off (port 0). Leader
election is off (one replica), and the reconciler writes AuthConfig status itself. Keycloak's
HTTPS JWKS is trusted through ``SSL_CERT_FILE`` = the testbed CA.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.manifests import crds
from tests.manifests.kube_apply import KubeApplier
from tests.testbed import build, process
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

START_TIMEOUT = 60.0
AUTHCONFIG_READY_TIMEOUT = 60.0
AUTHCONFIG_GROUP = "authorino.kuadrant.io"
AUTHCONFIG_VERSION = "v1beta3"
AUTHCONFIG_API = f"{AUTHCONFIG_GROUP}/{AUTHCONFIG_VERSION}"


class AuthConfigNotReady(process.ComponentError):
    """Authorino did not report an AuthConfig ready; the message carries its status."""


def authconfig_crds() -> list[dict[str, Any]]:
    """The AuthConfig CRD of ``versions.AUTHORINO`` (the release the binary is built from)."""
    return [doc for doc in crds.load_crds() if doc["spec"]["group"] == AUTHCONFIG_GROUP]


async def install(cluster: Cluster, namespace: str) -> None:
    """The AuthConfig CRD (Established) and ``namespace`` on ``cluster``; idempotent."""
    async with KubeApplier(cluster) as api:
        await api.install_crds(authconfig_crds())
        await api.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            dry_run=False,
        )


@dataclass
class Authorino(process.Supervised):
    """``authorino server`` for one namespace of ``cluster``; log: ``<log_dir>/authorino.log``."""

    cluster: Cluster
    namespace: str
    log_dir: Path
    ca_file: Path
    grpc_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    start_seconds: list[float] = field(default_factory=list)
    _proc: process.ManagedProcess | None = None

    @property
    def grpc_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.grpc_port)

    @property
    def readyz_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/readyz"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "authorino.log"

    def argv(self) -> list[str]:
        return [
            str(build.binary("authorino")),
            "server",
            f"--watch-namespace={self.namespace}",
            f"--ext-auth-grpc-port={self.grpc_port}",
            "--ext-auth-http-port=0",  # off: Envoy talks gRPC
            "--oidc-http-port=0",  # off: the overlay issues no Festival Wristbands
            f"--webhook-service-port={self.webhook_port}",
            f"--health-probe-addr=127.0.0.1:{self.health_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--enable-leader-election=false",
            "--log-level=info",  # debug would log whole requests, tokens included
            "--log-mode=production",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> Authorino:
        """Start and wait until the health probe is ready and gRPC accepts connections."""
        if self._proc is not None and self._proc.running:
            return self
        env = {"KUBECONFIG": str(self.cluster.admin_kubeconfig), "SSL_CERT_FILE": str(self.ca_file)}
        took = self._start_process(
            "authorino",
            self.argv(),
            self.log_path,
            env=env,
            ready=lambda: process.http_ok(self.readyz_url) and _accepts(*self.grpc_address),
            what=f"ready ({self.readyz_url}, gRPC on port {self.grpc_port})",
            timeout=timeout,
        )
        self.start_seconds.append(took)
        return self


def _accepts(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0):
        return True


# -- AuthConfigs ----------------------------------------------------------------------------------
def authconfig(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """An AuthConfig object with ``spec``."""
    return {
        "apiVersion": AUTHCONFIG_API,
        "kind": "AuthConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }


def opaque_secret(name: str, namespace: str, string_data: Mapping[str, str]) -> dict[str, Any]:
    """A Secret for ``sharedSecretRef`` (Authorino reads it from the AuthConfig's namespace)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": dict(string_data),
    }


async def apply_authconfigs(
    cluster: Cluster,
    authconfigs: Sequence[Mapping[str, Any]],
    secrets: Sequence[Mapping[str, Any]] = (),
    *,
    authorino: Authorino | None = None,
    within: float = AUTHCONFIG_READY_TIMEOUT,
) -> list[dict[str, Any]]:
    """Apply the Secrets, then the AuthConfigs; wait until each reports ready; their statuses."""
    async with KubeApplier(cluster) as api:
        for secret in secrets:
            await api.apply(secret, dry_run=False)
        for config in authconfigs:
            await api.apply(config, dry_run=False)
    async with cluster.admin_client() as client:
        objects = k8s.CustomObjectsApi(client)
        return [
            await _wait_ready(objects, config, authorino=authorino, within=within)
            for config in authconfigs
        ]


async def _wait_ready(
    objects: k8s.CustomObjectsApi,
    config: Mapping[str, Any],
    *,
    authorino: Authorino | None,
    within: float,
) -> dict[str, Any]:
    meta = config["metadata"]
    deadline = time.monotonic() + within
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = await objects.get_namespaced_custom_object(
            AUTHCONFIG_GROUP, AUTHCONFIG_VERSION, meta["namespace"], "authconfigs", meta["name"]
        )
        status = doc.get("status") or {}
        if _is_ready(status):
            return dict(status)
        await asyncio.sleep(0.3)
    log = f"\nAuthorino log ends with:\n{authorino.tail()}" if authorino is not None else ""
    raise AuthConfigNotReady(
        f"AuthConfig {meta['namespace']}/{meta['name']} was not ready within {within:.0f}s; "
        f"status: {status or '(none)'}{log}"
    )


def _is_ready(status: Mapping[str, Any]) -> bool:
    summary = status.get("summary") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and summary.get("ready") is True
