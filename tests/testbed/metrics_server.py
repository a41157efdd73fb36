"""The real metrics-server (``sigs.k8s.io/metrics-server``) next to a testbed cluster, serving the
resource metrics API ``metrics.k8s.io/v1beta1`` through the API server's aggregation layer.

``start_metrics_server(cluster, ca)`` starts it as a process on 127.0.0.1 (free port, serving
certificate from the run's CA), registers it and waits until ``/apis/metrics.k8s.io/v1beta1/nodes``
answers with the usage of every kwok node (wanted: ``nodes``). Started only by the tests that need
it (fixture ``metrics_server``): the scrape loop costs CPU and readiness takes two scrapes.

How it fits together:

* metrics-server scrapes each node at ``https://<InternalDNS>:<daemonEndpoints.kubeletEndpoint>``
  (the nodes' InternalDNS address is ``localhost``: their InternalIP is only reachable through the
  API server's egress proxy, see ``cluster.py``)
  (``--kubelet-use-node-status-port``) on the path of the node annotation
  ``metrics.k8s.io/resource-metrics-path``: kwok's emulated ``/metrics/resource`` (see
  ``cluster.py``), TLS checked against the run's CA.
* The aggregation layer reaches metrics-server through Service ``kube-system/metrics-server`` of
  type ExternalName ``127.0.0.1``: kube-aggregator resolves ExternalName services to
  ``externalName:port`` without endpoints (``ResolveCluster`` in k8s.io/apiserver
  ``pkg/util/proxy``), while EndpointSlices may not hold loopback addresses. The APIService checks
  the serving certificate against ``metrics-server.kube-system.svc`` and the run's CA.
* metrics-server talks to the API server as the cluster's ``admin`` (as kwokctl's binary runtime
  does): listing nodes and pods, delegated authentication/authorization of callers, reading
  ``kube-system/extension-apiserver-authentication`` for the front-proxy CA.

Figures: metrics-server needs two scrapes (``--metric-resolution``, at least 10 s) before it
reports a CPU rate, so new pods show up 10-20 s after they are Running.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.testbed import build, process
from tests.testbed.cluster import HOST, Cluster
from tests.testbed.pki import CertificateAuthority
from tests.testbed.ports import free_port

NAMESPACE = "kube-system"
SERVICE = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"
METRIC_RESOLUTION_S = 10  # metrics-server's minimum
READY_TIMEOUT = 120.0


@dataclass
class MetricsServer:
    """A running metrics-server registered with ``cluster``'s aggregation layer."""

    cluster: Cluster
    ca: CertificateAuthority
    port: int
    process: process.ManagedProcess
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def register(self) -> None:
        """(Re-)create the Service and the APIService ``v1beta1.metrics.k8s.io``."""
        _register(self.cluster, self.ca, self.port)

    def unregister(self) -> None:
        """Delete the APIService: the cluster no longer serves ``metrics.k8s.io``."""
        status, body = _admin_request(
            self.cluster, "DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{API_SERVICE}"
        )
        if status not in (200, 202, 404):
            raise process.ComponentError(f"deleting APIService {API_SERVICE}: HTTP {status} {body}")

    def stop(self) -> None:
        self.process.stop(timeout=10)


def start_metrics_server(
    cluster: Cluster,
    ca: CertificateAuthority,
    *,
    nodes: list[str],
    timeout: float = READY_TIMEOUT,
) -> MetricsServer:
    """Start metrics-server for ``cluster``, register ``v1beta1.metrics.k8s.io`` and wait until the
    metrics API reports usage of every node in ``nodes``."""
    t0 = time.monotonic()
    port = free_port()
    serving = ca.issue(
        f"{cluster.name}-metrics-server",
        hosts=(HOST, "localhost", f"{SERVICE}.{NAMESPACE}.svc"),
    )
    kubeconfig = cluster.admin_kubeconfig
    proc = process.ManagedProcess(
        f"{cluster.name}-metrics-server",
        [
            build.binary("metrics-server"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--kubelet-certificate-authority={ca.cert}",
            "--kubelet-preferred-address-types=InternalDNS",
            "--kubelet-use-node-status-port",
            f"--metric-resolution={METRIC_RESOLUTION_S}s",
            # must stay below 90% of the resolution (metrics-server validates it)
            "--kubelet-request-timeout=5s",
        ],
        cluster.log_dir / "metrics-server.log",
    )
    server = MetricsServer(cluster=cluster, ca=ca, port=port, process=proc)
    try:
        proc.start()
        proc.wait_until(
            # /readyz waits for the first scrape; /livez says it serves: register it now
            lambda: _status(f"{server.url}/livez", cluster) == 200,
            timeout=timeout,
            what="serving (/livez)",
        )
        server.startup_seconds["serving"] = time.monotonic() - t0
        server.register()
        wanted = set(nodes)
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            status, body = _admin_get(cluster, "/apis/metrics.k8s.io/v1beta1/nodes")
            if status == 200:
                reported = {
                    item["metadata"]["name"]
                    for item in json.loads(body).get("items") or []
                    if (item.get("usage") or {}).get("cpu") is not None
                }
                if wanted <= reported:
                    break
                last = f"nodes with usage: {sorted(reported)}"
            else:
                last = f"HTTP {status}: {body[:300]}"
            if not proc.running or time.monotonic() > deadline:
                raise process.ComponentError(
                    f"{proc.name}: the metrics API did not report nodes {sorted(wanted)} within "
                    f"{timeout:.0f}s (last answer: {last}).\nmetrics-server log {proc.log_path} "
                    f"ends with:\n{proc.tail()}"
                )
            time.sleep(1.0)
    except BaseException:
        proc.stop(timeout=10)
        raise
    server.startup_seconds["nodes_reported"] = time.monotonic() - t0
    (cluster.log_dir / "metrics-server-startup.json").write_text(
        json.dumps(server.startup_seconds, indent=2)
    )
    return server


def _register(cluster: Cluster, ca: CertificateAuthority, port: int) -> None:
    """Service (ExternalName 127.0.0.1) and APIService for the metrics API (create or replace)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": HOST},
    }
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": API_SERVICE},
        "spec": {
            "group": "metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": SERVICE, "namespace": NAMESPACE, "port": port},
            "caBundle": base64.b64encode(ca.cert.read_bytes()).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    _apply(cluster, f"/api/v1/namespaces/{NAMESPACE}/services", SERVICE, service)
    _apply(cluster, "/apis/apiregistration.k8s.io/v1/apiservices", API_SERVICE, api_service)


def _apply(cluster: Cluster, collection: str, name: str, obj: dict[str, Any]) -> None:
    status, body = _admin_request(cluster, "POST", collection, obj)
    if status == 409:
        current_status, current = _admin_get(cluster, f"{collection}/{name}")
        if current_status != 200:
            raise process.ComponentError(f"reading {collection}/{name}: HTTP {current_status}")
        obj = {**obj, "metadata": json.loads(current)["metadata"]}
        status, body = _admin_request(cluster, "PUT", f"{collection}/{name}", obj)
    if status not in (200, 201):
        raise process.ComponentError(
            f"{cluster.name}: creating {collection}/{name} failed: HTTP {status}: {body[:500]}"
        )


def _context(cluster: Cluster, *, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    if client_cert:
        ctx.load_cert_chain(str(cluster.admin_cert.cert), str(cluster.admin_cert.key))
    return ctx


def _admin_request(
    cluster: Cluster, method: str, path: str, obj: dict[str, Any] | None = None
) -> tuple[int, str]:
    return cluster.admin_request(method, path, obj, accept="application/json")


def _admin_get(cluster: Cluster, path: str) -> tuple[int, str]:
    return _admin_request(cluster, "GET", path)


def _status(url: str, cluster: Cluster) -> int:
    req = urllib.request.Request(url)  # noqa: S310 - https URL of a local test component
    try:
        with urllib.request.urlopen(  # noqa: S310
            req, timeout=2.0, context=_context(cluster, client_cert=False)
        ) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def nanocores(quantity: str) -> int:
    """A CPU figure of the metrics API in nanocores: metrics-server writes '249991265n', or a
    shorter exact form ('1m', '2') when the rate is round."""
    for suffix, nanos_per_unit in (("n", 1), ("u", 1_000), ("m", 1_000_000)):
        if quantity.endswith(suffix) and quantity[:-1].isdigit():
            return int(quantity[:-1]) * nanos_per_unit
    if quantity.isdigit():
        return int(quantity) * 10**9
    raise AssertionError(f"unexpected CPU quantity {quantity!r}")
