"""A running testbed cluster, a real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods answer logs and exec; kwok
listens on the nodes' address through an egress proxy, see below), all started as processes.

:class:`Cluster` is the handle tests use: API clients, fake nodes, service-account tokens, stop.
``tests.testbed.control_plane.start.start_cluster(name, ca, run_dir, jwt_issuers)`` starts one (its
stages and configuration files: ``tests/testbed/control_plane/``); every component logs to
``run_dir/<name>/<component>.log``. Two clusters share nothing but the serving CA (``ca``, which
every testbed client trusts): each has its own etcd, ports, client CA, admin certificate and
service-account signing key, so a token or client certificate of one is rejected by the other.

JWT issuers (Keycloak realms) go into a structured ``AuthenticationConfiguration`` file. The issuer
need not be up when the API server starts: the JWT authenticator fetches discovery in the
background, retrying every 10 s, and ``/readyz`` does not wait for it (checked with an issuer
nobody listened on: ready in ~3.5 s, the log shows ``oidc authenticator: initializing plugin ...
connection refused``). Tokens of that issuer get 401 until a retry succeeds: call
:meth:`Cluster.wait_token_accepted` once Keycloak is up.

Pods on kwok nodes never run. kwok serves ``logs`` from one CRI-format file
(``Cluster.fake_log_file``) for every container but those named ``scripted``, whose log is
``Cluster.scripted_log_file`` (tests write it; kwok reads it at each request, honouring
``sinceSeconds``/``sinceTime``/``tailLines`` like a kubelet), and runs ``exec`` commands *on
this machine*, in ``Cluster.exec_dir``: it is a testbed for an API-driven tool, not a sandbox.

Node addresses: kube-apiserver refuses to proxy to a node whose address is not global unicast
(``/api/v1/nodes/<n>/proxy/...`` answers 400 ``address not allowed`` for 127.0.0.1, see
``isProxyableHostname`` in k8s ``pkg/registry/core/node/strategy.go``). So the fake nodes carry a
documentation address (``egress_proxy.NODE_IP``, never routed) as their InternalIP, and the API
server reaches the cluster network through an egress selector (``cluster``: node proxy, pod logs
and exec, aggregated APIs) whose HTTP CONNECT proxy (``tests/testbed/egress_proxy.py``, a Unix
socket) sends that address to kwok on 127.0.0.1. kwok's kubelet-facing server (one port for every
fake node: ``daemonEndpoints.kubeletEndpoint``) thus stays on the loopback interface, which
matters: it authenticates nobody and runs ``exec`` commands on this machine. Clients that scrape
the nodes themselves (metrics-server) use the nodes' ``InternalDNS`` address, ``localhost``.

What kwok v0.8.0 serves to the API server (``pkg/kwok/server``): ``/containerLogs``, ``/exec``,
``/attach``, ``/portForward``, ``/healthz`` (``/readyz``, ``/livez``), ``/metrics`` plus the paths
of ``Metric`` resources (which must start with ``/metrics``: ``InstallMetrics`` in ``metrics.go``),
``/discovery/prometheus`` and ``/debug/pprof``. The kubelet's node log query ``/logs/`` (with
``/run/`` and ``/runningpods/``) is registered as a disabled endpoint even when debugging handlers
are on (``InstallDebuggingHandlers`` in ``debugging.go``: 405 "Debug endpoints are disabled."),
and nothing serves the Summary API ``/stats/summary`` (go-restful's 404 "404 page not found").
No kwok resource changes that: ``Logs``/``ClusterLogs`` feed ``/containerLogs`` only.

Resource metrics: kwok emulates the kubelet's ``/metrics/resource`` per node at
``/metrics/nodes/<node>/metrics/resource`` (the ``Metric`` of kwok's ``kustomize/metrics/resource``)
and each node carries the ``metrics.k8s.io/resource-metrics-path`` annotation metrics-server reads,
so a metrics-server (``tests/testbed/metrics_server.py``, started only on demand) scrapes the fake
nodes. Container usage comes from the pod annotations ``kwok.x-k8s.io/usage-cpu`` and
``kwok.x-k8s.io/usage-memory`` (defaults ``1m`` and ``1Mi``, kwok's ``kustomize/metrics/usage``).
The API server has the front-proxy (request-header) settings the aggregation layer needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.testbed import process, rbac_grants
from tests.testbed.kube_objects import Conflict, create
from tests.testbed.local_https import https_request
from tests.testbed.pki import CertPair

HOST = "127.0.0.1"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
FAKE_NODE_LABEL = ("type", "kwok")
# metrics-server scrapes this path on the node's kubelet port instead of /metrics/resource.
RESOURCE_METRICS_PATH_ANNOTATION = "metrics.k8s.io/resource-metrics-path"
# kwok: per-container usage read from these pod annotations (quantities, e.g. "250m", "64Mi").
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"
USAGE_MEMORY_ANNOTATION = "kwok.x-k8s.io/usage-memory"
# Usage of a fake node beyond its pods' (kubelet, OS): without it an empty node reports nothing.
NODE_BASE_CPU_CORES = 0.05
NODE_BASE_MEMORY_BYTES = 256 * 1024 * 1024

NODE_READY_TIMEOUT = 60.0

# Lines served as every fake container's log (kwok reads CRI log format: time stream tag message).
FAKE_LOG_LINES = (
    "kwok fake container started",
    "serving on :8080",
    "request handled status=200",
)


@dataclass(frozen=True)
class JWTIssuer:
    """One JWT issuer the API server trusts (structured authentication configuration)."""

    url: str
    audiences: tuple[str, ...]
    ca_file: Path | None
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    username_prefix: str = ""
    groups_prefix: str = ""


@dataclass
class Cluster:
    """A running control plane; :meth:`admin_client` / :meth:`client_for_token` make API clients."""

    name: str
    server: str
    ca_file: Path
    admin_kubeconfig: Path
    admin_cert: CertPair
    log_dir: Path
    service_account_issuer: str
    fake_log_file: Path
    exec_dir: Path
    node_ip: str  # InternalIP of every fake node (reached through the egress proxy)
    kubelet_port: int  # kwok's kubelet-facing port (on 127.0.0.1)
    processes: dict[str, process.ManagedProcess] = field(default_factory=dict)
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: JSON lines, policy
        ``control_plane/apiserver-audit-policy.yaml``."""
        return self.log_dir / "apiserver-audit.log"

    @property
    def scripted_log_file(self) -> Path:
        """The CRI-format log kwok serves for every container named ``scripted``."""
        return scripted_log_path(self.fake_log_file)

    # -- clients -------------------------------------------------------------------------------
    def configuration(self, token: str | None = None) -> k8s.Configuration:
        """Client configuration: admin client certificate, or the bearer ``token`` when given."""
        cfg = k8s.Configuration(host=self.server)
        cfg.ssl_ca_cert = str(self.ca_file)
        if token is None:
            cfg.cert_file = str(self.admin_cert.cert)
            cfg.key_file = str(self.admin_cert.key)
        else:
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    def admin_client(self) -> k8s.ApiClient:
        """An ApiClient authenticated as ``admin`` (O=system:masters); the caller closes it."""
        return k8s.ApiClient(self.configuration())

    def client_for_token(self, token: str) -> k8s.ApiClient:
        """An ApiClient sending ``token`` as bearer token; the caller closes it."""
        return k8s.ApiClient(self.configuration(token))

    def admin_request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> tuple[int, str]:
        """One synchronous API call as ``admin`` (for code outside an event loop):
        (status, text), (0, error) when the server cannot be reached."""
        return https_request(
            method,
            f"{self.server}{path}",
            self.ca_file,
            self.admin_cert,
            body=body,
            content_type=content_type,
            accept=accept,
        )

    # -- helpers built on the admin client -------------------------------------------------------
    async def ensure_fake_nodes(self, count: int = 2, *, prefix: str = "kwok-node") -> list[str]:
        """Register ``count`` kwok-managed nodes (idempotent) and wait until all are Ready."""
        names = [f"{prefix}-{i}" for i in range(count)]
        async with self.admin_client() as api:
            core = k8s.CoreV1Api(api)
            for node in names:
                with contextlib.suppress(Conflict):
                    await create(core.create_node(_fake_node(node)))
            deadline = time.monotonic() + NODE_READY_TIMEOUT
            while True:
                nodes = await core.list_node(label_selector="=".join(FAKE_NODE_LABEL))
                ready = {n.metadata.name for n in nodes.items if _node_ready(n)}
                if ready.issuperset(names):
                    return names
                if time.monotonic() > deadline:
                    raise process.ComponentError(
                        f"{self.name}: kwok nodes {sorted(set(names) - ready)} not Ready within "
                        f"{NODE_READY_TIMEOUT:.0f}s.\nkwok log {self.log_dir / 'kwok.log'} ends "
                        f"with:\n{self.processes['kwok'].tail()}"
                    )
                await asyncio.sleep(0.2)

    async def service_account_token(
        self,
        *,
        name: str,
        namespace: str = "default",
        rules: Sequence[Mapping[str, Any] | k8s.V1PolicyRule] | None = None,
        cluster_role: str | None = None,
        role: str | None = None,
        cluster_wide: bool = False,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """Create (or reuse) ServiceAccount ``namespace/name``, grant it permissions, return a real
        token from the TokenRequest API (default audiences: the API server's own).

        Permissions, at most one of:

        * ``rules``: ``V1PolicyRule`` objects or dicts in API spelling, e.g.
          ``{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}``; creates Role ``name``,
          or ClusterRole ``<namespace>-<name>`` when ``cluster_wide``;
        * ``cluster_role``: an existing ClusterRole, e.g. ``view``;
        * ``role``: an existing Role in ``namespace``.

        The binding is a RoleBinding in ``namespace``, or a ClusterRoleBinding when
        ``cluster_wide``. With none of them the account authenticates but may do nothing.
        """
        if sum(x is not None for x in (rules, cluster_role, role)) > 1:
            raise ValueError("give at most one of rules=, cluster_role=, role=")
        if role is not None and cluster_wide:
            raise ValueError("role= names a namespaced Role: it cannot be bound cluster_wide")
        meta = k8s.V1ObjectMeta
        async with self.admin_client() as api:
            core = k8s.CoreV1Api(api)
            with contextlib.suppress(Conflict):
                await create(core.create_namespace(k8s.V1Namespace(metadata=meta(name=namespace))))
            with contextlib.suppress(Conflict):
                await create(
                    core.create_namespaced_service_account(
                        namespace, k8s.V1ServiceAccount(metadata=meta(name=name))
                    )
                )
            await rbac_grants.grant_service_account(
                api,
                name=name,
                namespace=namespace,
                rules=rules,
                cluster_role=cluster_role,
                role=role,
                cluster_wide=cluster_wide,
            )
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(
                    audiences=list(audiences) if audiences is not None else [],
                    expiration_seconds=expiration_seconds,
                )
            )
            answer = await core.create_namespaced_service_account_token(name, namespace, request)
            token = answer.status.token
            if not isinstance(token, str) or not token:
                raise RuntimeError(
                    f"{self.name}: TokenRequest for {namespace}/{name} gave no token"
                )
            return token

    async def whoami(self, token: str) -> k8s.V1UserInfo:
        """The identity the API server derives from ``token`` (SelfSubjectReview).

        Raises ``ApiException`` (401) when the token is not accepted.
        """
        async with self.client_for_token(token) as api:
            review = await k8s.AuthenticationV1Api(api).create_self_subject_review(
                k8s.V1SelfSubjectReview()
            )
            return review.status.user_info

    async def wait_token_accepted(self, token: str, *, within: float = 30.0) -> k8s.V1UserInfo:
        """Wait until ``token`` authenticates; returns the user info.

        The API server fetches a JWT issuer's discovery document in the background and retries
        every 10 s, so tokens of an issuer (Keycloak) that came up after the API server are
        rejected (401) for up to ~10 s after it is reachable.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                return await self.whoami(token)
            except ApiException as exc:
                if exc.status != 401 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    # -- lifecycle -------------------------------------------------------------------------------
    def memory_report(self) -> dict[str, dict[str, int]]:
        """Per component: current and peak resident memory in KiB (``VmRSS`` / ``VmHWM``)."""
        report: dict[str, dict[str, int]] = {}
        for comp, proc in self.processes.items():
            if proc.proc is None or not proc.running:
                continue
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":", 1)
                    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines()
                    if ":" in line
                )
                report[comp] = {
                    "rss_kib": int(fields["VmRSS"].split()[0]),
                    "peak_rss_kib": int(fields["VmHWM"].split()[0]),
                }
        return report

    def stop(self) -> None:
        """Stop every component (kwok first, etcd last); writes ``memory.json`` beside the logs."""
        report = self.memory_report()
        if report:
            totals = {
                "peak_rss_kib_sum": sum(r["peak_rss_kib"] for r in report.values()),
                "components": report,
                "startup_seconds": self.startup_seconds,
            }
            with contextlib.suppress(OSError):
                (self.log_dir / "memory.json").write_text(json.dumps(totals, indent=2))
        for proc in reversed(list(self.processes.values())):
            proc.stop(timeout=10)


SCRIPTED_CONTAINER = "scripted"


def scripted_log_path(fake_log: Path) -> Path:
    """The log kwok serves for containers named :data:`SCRIPTED_CONTAINER`, beside ``fake_log``."""
    return fake_log.parent / "scripted-container.log"


def _fake_node(name: str) -> k8s.V1Node:
    key, value = KWOK_NODE_ANNOTATION
    label_key, label_value = FAKE_NODE_LABEL
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name,
            annotations={
                key: value,
                RESOURCE_METRICS_PATH_ANNOTATION: f"/metrics/nodes/{name}/metrics/resource",
            },
            labels={
                label_key: label_value,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        ),
        spec=k8s.V1NodeSpec(),
    )


def _node_ready(node: Any) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)
