"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods answer logs and exec; kwok listens on the nodes'
address through an egress proxy, see below), all started as processes.

``start_cluster(name, ca, run_dir, jwt_issuers)`` gives a :class:`Cluster`; every component logs to
``run_dir/<name>/<component>.log``. Two clusters share nothing but the serving CA (``ca``, which
every testbed client trusts): each has its own etcd, ports, client CA, admin certificate and
service-account signing key, so a token or client certificate of one is rejected by the other.

Startup order (fast path): certificates and config files first, then etcd and kube-apiserver
together (the API server retries etcd), then, once ``/readyz`` answers, the controller manager,
scheduler and kwok in parallel; the cluster is ready when the ``default`` service account exists.

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
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.testbed import build, egress_proxy, paths, pki, process
from tests.testbed.pki import CertificateAuthority, CertPair
from tests.testbed.ports import free_port

HOST = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
FAKE_NODE_LABEL = ("type", "kwok")
# metrics-server scrapes this path on the node's kubelet port instead of /metrics/resource.
RESOURCE_METRICS_PATH_ANNOTATION = "metrics.k8s.io/resource-metrics-path"
# kwok: per-container usage read from these pod annotations (quantities, e.g. "250m", "64Mi").
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"
USAGE_MEMORY_ANNOTATION = "kwok.x-k8s.io/usage-memory"
FRONT_PROXY_CLIENT = "front-proxy-client"
AUDIT_POLICY = Path(__file__).with_name("apiserver-audit-policy.yaml")
# Usage of a fake node beyond its pods' (kubelet, OS): without it an empty node reports nothing.
NODE_BASE_CPU_CORES = 0.05
NODE_BASE_MEMORY_BYTES = 256 * 1024 * 1024

ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 120.0
COMPONENT_TIMEOUT = 60.0
DEFAULT_SA_TIMEOUT = 60.0
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
        """The API server's audit log: JSON lines, policy ``apiserver-audit-policy.yaml``."""
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
                with contextlib.suppress(_Conflict):
                    await _create(core.create_node(_fake_node(node)))
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
            core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
            with contextlib.suppress(_Conflict):
                await _create(core.create_namespace(k8s.V1Namespace(metadata=meta(name=namespace))))
            with contextlib.suppress(_Conflict):
                await _create(
                    core.create_namespaced_service_account(
                        namespace, k8s.V1ServiceAccount(metadata=meta(name=name))
                    )
                )
            wide_name = f"{namespace}-{name}"  # cluster-scoped objects: unique per account
            role_ref: k8s.V1RoleRef | None = None
            if rules is not None:
                policy = [_policy_rule(r) for r in rules]
                if cluster_wide:
                    cr = k8s.V1ClusterRole(metadata=meta(name=wide_name), rules=policy)
                    await _apply(
                        rbac.create_cluster_role(cr),
                        lambda: rbac.replace_cluster_role(wide_name, cr),
                    )
                    role_ref = _role_ref("ClusterRole", wide_name)
                else:
                    r = k8s.V1Role(metadata=meta(name=name), rules=policy)
                    await _apply(
                        rbac.create_namespaced_role(namespace, r),
                        lambda: rbac.replace_namespaced_role(name, namespace, r),
                    )
                    role_ref = _role_ref("Role", name)
            elif cluster_role is not None:
                role_ref = _role_ref("ClusterRole", cluster_role)
            elif role is not None:
                role_ref = _role_ref("Role", role)
            if role_ref is not None:
                subjects = [
                    k8s.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)
                ]
                if cluster_wide:
                    crb = k8s.V1ClusterRoleBinding(
                        metadata=meta(name=wide_name), role_ref=role_ref, subjects=subjects
                    )
                    await _apply(
                        rbac.create_cluster_role_binding(crb),
                        lambda: rbac.replace_cluster_role_binding(wide_name, crb),
                    )
                else:
                    rb = k8s.V1RoleBinding(
                        metadata=meta(name=name), role_ref=role_ref, subjects=subjects
                    )
                    await _apply(
                        rbac.create_namespaced_role_binding(namespace, rb),
                        lambda: rbac.replace_namespaced_role_binding(name, namespace, rb),
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


# -- startup ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Everything a cluster's processes are started with: ports, certificates, config files."""

    name: str
    dir: Path
    ca: CertificateAuthority
    binaries: Mapping[str, Path]
    ports: Mapping[str, int]
    server: str
    node_ip: str
    client_ca: CertificateAuthority
    admin: CertPair
    kubelet_client: CertPair
    front_proxy_ca: CertificateAuthority
    front_proxy_client: CertPair
    serving: Mapping[str, CertPair]
    service_account: CertPair
    kubeconfigs: Mapping[str, Path]
    authn_config: Path
    fake_log: Path
    exec_dir: Path
    kwok_config: Path
    egress_socket: Path
    egress_config: Path
    tracing_config: Path | None

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self.ports['etcd']}"

    def healthz(self, comp: str) -> Callable[[], bool]:
        url = f"https://{HOST}:{self.ports[comp]}/healthz"
        return lambda: _https_status(url, self.ca.cert) == 200


def _plan(
    name: str,
    ca: CertificateAuthority,
    run_dir: Path,
    jwt_issuers: Sequence[JWTIssuer],
    tracing_endpoint: str | None,
) -> _Plan:
    """Stage 1: ports, PKI and every configuration file, nothing started."""
    cluster_dir = run_dir / name
    cluster_dir.mkdir(parents=True, exist_ok=True)
    ports = {
        comp: free_port() for comp in ("etcd", "etcd-peer", "apiserver", "cm", "sched", "kwok")
    }
    server = f"https://{HOST}:{ports['apiserver']}"
    node_ip = egress_proxy.NODE_IP

    # PKI: serving certificates from the shared CA; client identities from this cluster's own CA.
    client_ca = CertificateAuthority(cluster_dir / "pki", name=f"kmg-{name}-client-ca")
    admin = client_ca.issue("admin", organizations=("system:masters",), client=True, server=False)
    # The controller manager runs its controllers with its own identity
    # (--use-service-account-credentials=false): one token per controller costs ~4 s of startup.
    cm_client = client_ca.issue(
        "system:kube-controller-manager",
        organizations=("system:masters",),
        client=True,
        server=False,
    )
    sched_client = client_ca.issue("system:kube-scheduler", client=True, server=False)
    # Aggregation layer (metrics-server): the API server authenticates to aggregated API servers
    # with this client certificate; they trust it through the request-header CA it publishes.
    front_proxy_ca = CertificateAuthority(
        cluster_dir / "pki" / "front-proxy", name=f"kmg-{name}-front-proxy-ca"
    )
    serving = {comp: ca.issue(f"{name}-{comp}") for comp in ("apiserver", "cm", "sched")}
    # kwok is every fake node's kubelet: the API server reaches it at the nodes' InternalIP
    # (through the egress proxy), metrics-server at their InternalDNS name, localhost.
    serving["kwok"] = ca.issue(f"{name}-kwok", hosts=(HOST, "localhost", node_ip))

    kubeconfigs = {
        who: _write_kubeconfig(cluster_dir / f"{who}.kubeconfig", name, server, ca.cert, pair)
        for who, pair in (
            ("admin", admin),
            ("controller-manager", cm_client),
            ("scheduler", sched_client),
        )
    }
    authn_config = cluster_dir / "authentication-config.yaml"
    authn_config.write_text(yaml.safe_dump(authentication_configuration(jwt_issuers)))
    fake_log = cluster_dir / "fake-container.log"
    _write_fake_log(fake_log)
    scripted_log_path(fake_log).touch()
    exec_dir = cluster_dir / "exec"
    exec_dir.mkdir(exist_ok=True)
    kwok_config = cluster_dir / "kwok.yaml"
    kwok_config.write_text(_kwok_config(fake_log, exec_dir))
    egress_socket = _socket_path(cluster_dir / "egress.sock")
    egress_config = cluster_dir / "egress-selector.yaml"
    egress_config.write_text(yaml.safe_dump(_egress_selector_configuration(egress_socket)))
    tracing_config = None
    if tracing_endpoint is not None:
        tracing_config = cluster_dir / "tracing-config.yaml"
        tracing_config.write_text(yaml.safe_dump(tracing_configuration(tracing_endpoint)))
    return _Plan(
        name=name,
        dir=cluster_dir,
        ca=ca,
        binaries={
            comp: build.binary(comp)
            for comp in (
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
            )
        },
        ports=ports,
        server=server,
        node_ip=node_ip,
        client_ca=client_ca,
        admin=admin,
        kubelet_client=client_ca.issue("kube-apiserver-kubelet-client", client=True, server=False),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=front_proxy_ca.issue(FRONT_PROXY_CLIENT, client=True, server=False),
        serving=serving,
        service_account=pki.rsa_key_pair(cluster_dir / "pki", "service-account"),
        kubeconfigs=kubeconfigs,
        authn_config=authn_config,
        fake_log=fake_log,
        exec_dir=exec_dir,
        kwok_config=kwok_config,
        egress_socket=egress_socket,
        egress_config=egress_config,
        tracing_config=tracing_config,
    )


Argv = list[str | os.PathLike[str]]


def _etcd_argv(plan: _Plan) -> Argv:
    peer_url = f"http://{HOST}:{plan.ports['etcd-peer']}"
    return [
        plan.binaries["etcd"],
        f"--name={plan.name}",
        f"--data-dir={plan.dir / 'etcd-data'}",
        f"--listen-client-urls={plan.etcd_url}",
        f"--advertise-client-urls={plan.etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={plan.name}={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",  # throwaway test data: no fsync makes writes much faster
        "--log-level=warn",
    ]


def _egress_argv(plan: _Plan) -> Argv:
    return [
        sys.executable,
        "-m",
        "tests.testbed.egress_proxy",
        f"--socket={plan.egress_socket}",
        f"--map={plan.node_ip}={HOST}",
    ]


def _apiserver_argv(plan: _Plan, audit_log: Path) -> Argv:
    serving, sa = plan.serving["apiserver"], plan.service_account
    argv: Argv = [
        plan.binaries["kube-apiserver"],
        f"--etcd-servers={plan.etcd_url}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['apiserver']}",
        f"--cert-dir={plan.dir / 'apiserver-certs'}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={plan.client_ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--authentication-config={plan.authn_config}",
        f"--service-account-issuer={plan.server}",
        f"--service-account-key-file={sa.cert}",
        f"--service-account-signing-key-file={sa.key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        f"--kubelet-certificate-authority={plan.ca.cert}",
        f"--kubelet-client-certificate={plan.kubelet_client.cert}",
        f"--kubelet-client-key={plan.kubelet_client.key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--requestheader-client-ca-file={plan.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-uid-headers=X-Remote-Uid",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={plan.front_proxy_client.cert}",
        f"--proxy-client-key-file={plan.front_proxy_client.key}",
        f"--egress-selector-config-file={plan.egress_config}",
        "--endpoint-reconciler-type=none",  # no real network: no endpoints for `kubernetes`
        "--profiling=false",
        f"--audit-policy-file={AUDIT_POLICY}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",  # each event written before the answer: no lag
    ]
    if plan.tracing_config is not None:
        argv.append(f"--tracing-config-file={plan.tracing_config}")
    return argv


def _controller_manager_argv(plan: _Plan) -> Argv:
    serving = plan.serving["cm"]
    return [
        plan.binaries["kube-controller-manager"],
        f"--kubeconfig={plan.kubeconfigs['controller-manager']}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['cm']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--cert-dir={plan.dir / 'cm-certs'}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        f"--service-account-private-key-file={plan.service_account.key}",
        f"--root-ca-file={plan.ca.cert}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--profiling=false",
    ]


def _scheduler_argv(plan: _Plan) -> Argv:
    serving = plan.serving["sched"]
    return [
        plan.binaries["kube-scheduler"],
        f"--kubeconfig={plan.kubeconfigs['scheduler']}",
        f"--bind-address={HOST}",
        f"--secure-port={plan.ports['sched']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        "--leader-elect=false",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--profiling=false",
    ]


def _kwok_argv(plan: _Plan) -> Argv:
    serving = plan.serving["kwok"]
    return [
        plan.binaries["kwok"],
        f"--kubeconfig={plan.kubeconfigs['admin']}",
        f"--config={plan.kwok_config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=" + "=".join(KWOK_NODE_ANNOTATION),
        f"--node-ip={plan.node_ip}",
        f"--node-port={plan.ports['kwok']}",
        f"--server-address={HOST}:{plan.ports['kwok']}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        "--node-lease-duration-seconds=40",
    ]


def start_cluster(
    name: str,
    ca: CertificateAuthority,
    run_dir: Path,
    jwt_issuers: Sequence[JWTIssuer] = (),
    tracing_endpoint: str | None = None,
) -> Cluster:
    """Start a whole control plane named ``name`` and wait until it schedules and runs pods.

    Stages: plan (ports, PKI, config files), storage and API (etcd, the egress proxy,
    kube-apiserver, until ready), control loops and nodes (controller manager, scheduler, kwok,
    until healthy and the default service account exists).

    ``tracing_endpoint`` (``host:port`` of an OTLP/gRPC collector): the API server exports its
    spans there (:func:`tracing_configuration`)."""
    t0 = time.monotonic()
    plan = _plan(name, ca, run_dir, jwt_issuers, tracing_endpoint)
    cluster = Cluster(
        name=name,
        server=plan.server,
        ca_file=ca.cert,
        admin_kubeconfig=plan.kubeconfigs["admin"],
        admin_cert=plan.admin,
        log_dir=plan.dir,
        service_account_issuer=plan.server,
        fake_log_file=plan.fake_log,
        exec_dir=plan.exec_dir,
        node_ip=plan.node_ip,
        kubelet_port=plan.ports["kwok"],
    )
    cluster.startup_seconds["prepare"] = time.monotonic() - t0

    def managed(comp: str, argv: Argv, **kw: Any) -> process.ManagedProcess:
        proc = process.ManagedProcess(f"{name}-{comp}", argv, plan.dir / f"{comp}.log", **kw)
        cluster.processes[comp] = proc
        proc.start()
        return proc

    try:
        _start_storage_and_api(plan, cluster, managed)
        cluster.startup_seconds["apiserver_ready"] = time.monotonic() - t0
        _start_control_loops_and_nodes(plan, managed)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds["ready"] = time.monotonic() - t0
    return cluster


Starter = Callable[..., process.ManagedProcess]


def _start_storage_and_api(plan: _Plan, cluster: Cluster, managed: Starter) -> None:
    """Stage 2: etcd, the egress proxy and kube-apiserver, until the API server is ready."""
    etcd = managed("etcd", _etcd_argv(plan))
    egress = managed("egress-proxy", _egress_argv(plan), cwd=paths.REPO_ROOT)
    apiserver = managed("kube-apiserver", _apiserver_argv(plan, cluster.audit_log))
    etcd.wait_until(
        lambda: process.http_ok(f"{plan.etcd_url}/health"), timeout=ETCD_TIMEOUT, what="healthy"
    )
    egress.wait_until(plan.egress_socket.exists, timeout=COMPONENT_TIMEOUT, what="listening")
    apiserver.wait_until(
        lambda: _https_status(f"{plan.server}/readyz", plan.ca.cert) == 200,
        timeout=APISERVER_TIMEOUT,
        what="ready (/readyz)",
    )


def _start_control_loops_and_nodes(plan: _Plan, managed: Starter) -> None:
    """Stage 3: controller manager, scheduler and kwok, until healthy and pods can be admitted."""
    cm = managed("kube-controller-manager", _controller_manager_argv(plan))
    sched = managed("kube-scheduler", _scheduler_argv(plan))
    # kwok also reads ~/.kwok/kwok.yaml when present: point its work dir at ours instead.
    kwok = managed("kwok", _kwok_argv(plan), env={"KWOK_WORKDIR": str(plan.dir / "kwok-workdir")})
    cm.wait_until(plan.healthz("cm"), timeout=COMPONENT_TIMEOUT, what="healthy")
    sched.wait_until(plan.healthz("sched"), timeout=COMPONENT_TIMEOUT, what="healthy")
    kwok.wait_until(plan.healthz("kwok"), timeout=COMPONENT_TIMEOUT, what="serving (/healthz)")
    # Pods are admitted only once their service account exists (controller manager's job).
    default_sa = f"{plan.server}/api/v1/namespaces/default/serviceaccounts/default"
    cm.wait_until(
        lambda: _https_status(default_sa, plan.ca.cert, plan.admin) == 200,
        timeout=DEFAULT_SA_TIMEOUT,
        what="creating the default service account",
    )


def start_clusters_parallel(
    specs: Sequence[tuple[str, Sequence[JWTIssuer]]],
    ca: CertificateAuthority,
    run_dir: Path,
    tracing_endpoint: str | None = None,
) -> list[Cluster]:
    """Start several clusters at once (threads; each start is mostly waiting)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = [
            pool.submit(start_cluster, n, ca, run_dir, issuers, tracing_endpoint)
            for n, issuers in specs
        ]
        return [f.result() for f in futures]


def tracing_configuration(endpoint: str) -> dict[str, Any]:
    """The API server's ``TracingConfiguration`` (apiserver.config.k8s.io/v1): OTLP/gRPC to
    ``endpoint``, every request sampled.

    Why every request: the API server continues a caller's ``traceparent`` only for callers in
    ``system:masters`` or ``system:monitoring``; for everyone else (our users) it starts a new
    trace whose root span *links* to the caller's span, and that new root is sampled by this
    rate alone (parent-based sampling has no parent to follow)."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "TracingConfiguration",
        "endpoint": endpoint,
        "samplingRatePerMillion": 1_000_000,
    }


def authentication_configuration(issuers: Sequence[JWTIssuer]) -> dict[str, Any]:
    """The structured ``AuthenticationConfiguration`` (apiserver.config.k8s.io/v1) file content."""
    jwt: list[dict[str, Any]] = []
    for issuer in issuers:
        if not issuer.audiences:
            raise ValueError(f"JWT issuer {issuer.url}: at least one audience is required")
        spec: dict[str, Any] = {"url": issuer.url, "audiences": list(issuer.audiences)}
        if len(issuer.audiences) > 1:
            spec["audienceMatchPolicy"] = "MatchAny"
        if issuer.ca_file is not None:
            spec["certificateAuthority"] = issuer.ca_file.read_text()
        jwt.append(
            {
                "issuer": spec,
                "claimMappings": {
                    # prefix is required whenever claim is set; "" means no prefix
                    "username": {"claim": issuer.username_claim, "prefix": issuer.username_prefix},
                    "groups": {"claim": issuer.groups_claim, "prefix": issuer.groups_prefix},
                },
            }
        )
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "jwt": jwt,
    }


# -- files -----------------------------------------------------------------------------------------
def _write_kubeconfig(path: Path, name: str, server: str, ca_file: Path, pair: CertPair) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [
            {
                "name": pair.cert.stem,
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": pair.cert.stem}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


SCRIPTED_CONTAINER = "scripted"


def scripted_log_path(fake_log: Path) -> Path:
    return fake_log.parent / "scripted-container.log"


def _write_fake_log(path: Path) -> None:
    start = dt.datetime.now(dt.UTC)
    lines = []
    for i, message in enumerate(FAKE_LOG_LINES):
        stamp = (start + dt.timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines.append(f"{stamp} stdout F {message}\n")
    path.write_text("".join(lines))


def _socket_path(preferred: Path) -> Path:
    """``preferred``, or a path in a fresh private temp dir when it is too long for a socket."""
    if len(os.fsencode(preferred)) < 100:  # sun_path holds 108 bytes
        return preferred
    return Path(tempfile.mkdtemp(prefix="kmg-egress-")) / "egress.sock"


def _egress_selector_configuration(socket_path: Path) -> dict[str, Any]:
    """kube-apiserver's egress: cluster traffic through the HTTP CONNECT proxy on a socket."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(socket_path)}},
                },
            }
        ],
    }


def _kwok_config(log_file: Path, exec_dir: Path) -> str:
    """kwok's --config: stages for fake nodes and pods, ClusterLogs and ClusterExec, and the
    resource metrics emulation (Metric + ClusterResourceUsage) metrics-server scrapes."""
    cluster_logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": "all-pods"},
        "spec": {
            "logs": [
                {"logsFile": str(log_file), "follow": False},
                {
                    "containers": [SCRIPTED_CONTAINER],
                    "logsFile": str(scripted_log_path(log_file)),
                    "follow": False,
                },
            ]
        },
    }
    cluster_exec = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterExec",
        "metadata": {"name": "all-pods"},
        "spec": {
            "execs": [
                {"local": {"workDir": str(exec_dir), "envs": [{"name": "KWOK_EXEC", "value": "1"}]}}
            ]
        },
    }
    docs = [
        yaml.safe_dump(cluster_logs),
        yaml.safe_dump(cluster_exec),
        _kwok_file("metrics-resource.yaml"),
        _kwok_file("usage-from-annotation.yaml"),
        _kwok_file("stages.yaml"),
    ]
    return "---\n".join(docs)


KWOK_DIR = Path(__file__).with_name("kwok")
# the constants the kwok files name as @NAME@
_KWOK_VALUES = {
    "NODE_BASE_CPU_CORES": repr(NODE_BASE_CPU_CORES),
    "NODE_BASE_MEMORY_BYTES": str(NODE_BASE_MEMORY_BYTES),
    "USAGE_CPU_ANNOTATION": USAGE_CPU_ANNOTATION,
    "USAGE_MEMORY_ANNOTATION": USAGE_MEMORY_ANNOTATION,
}


def _kwok_file(name: str) -> str:
    """A kwok configuration file of ``tests/testbed/kwok/`` with its ``@NAME@`` values filled."""
    text = (KWOK_DIR / name).read_text()
    for key, value in _KWOK_VALUES.items():
        text = text.replace(f"@{key}@", value)
    if "@" in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#")):
        raise ValueError(f"{name}: a @NAME@ placeholder has no value in _KWOK_VALUES")
    return text


# -- small helpers ---------------------------------------------------------------------------------
def https_request(
    method: str,
    url: str,
    ca_file: Path,
    client_cert: CertPair | None = None,
    *,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
    accept: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """A synchronous HTTPS request to a local test component, JSON ``body`` if any:
    (status, text), or (0, the error) when it cannot be reached."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - https URL of a local test component
        url, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def _https_status(url: str, ca_file: Path, client_cert: CertPair | None = None) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    req = urllib.request.Request(url)  # noqa: S310 - https URL of a local test component
    try:
        with urllib.request.urlopen(req, timeout=2.0, context=ctx) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


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


_RULE_FIELDS = {
    "apiGroups": "api_groups",
    "resources": "resources",
    "verbs": "verbs",
    "resourceNames": "resource_names",
    "nonResourceURLs": "non_resource_urls",
}


def _policy_rule(rule: Mapping[str, Any] | k8s.V1PolicyRule) -> k8s.V1PolicyRule:
    if isinstance(rule, k8s.V1PolicyRule):
        return rule
    unknown = set(rule) - set(_RULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown PolicyRule fields {sorted(unknown)}; use {sorted(_RULE_FIELDS)}")
    return k8s.V1PolicyRule(**{_RULE_FIELDS[k]: list(v) for k, v in rule.items()})


def _role_ref(kind: str, name: str) -> k8s.V1RoleRef:
    return k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind=kind, name=name)


def _node_ready(node: Any) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


class _Conflict(Exception):
    """The object already exists (HTTP 409)."""


async def _create(call: Any) -> Any:
    try:
        return await call
    except ApiException as exc:
        if exc.status == 409:
            raise _Conflict from exc
        raise


async def _apply(create: Any, replace: Any) -> None:
    """Create, or replace when it already exists."""
    try:
        await _create(create)
    except _Conflict:
        await replace()
