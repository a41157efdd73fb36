"""The stages of starting the local gateway's processes (:func:`~.start.start_gateway`), sharing
one :class:`Launch`: plan (folder, secrets, ports), the backends and the token exchange, the
policy service (its catalogue listed from the running backends) and the broker/router replicas,
Envoy. Each ``add_*`` stage configures services; :meth:`Launch.start` starts them."""

from __future__ import annotations

import json
import secrets as token_secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import envoy_proxy, leak_scan
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.jaeger import Jaeger
from tests.testbed.mcp_gateway import broker_router, envoy_config
from tests.testbed.mcp_gateway import service_configs as files
from tests.testbed.mcp_gateway.envoy_auth import AuthLayer
from tests.testbed.mcp_gateway.envoy_config import GatewayServer
from tests.testbed.mcp_gateway.stack import (
    BROKER_ROUTER,
    CALLER_HEADER,
    FACADE_CLIENT_SECRET,
    SERVER_PLANS,
    SERVICES,
    Service,
    console_script,
)
from tests.testbed.opa_server import OpaServer
from tests.testbed.ports import free_port

# (service ports, the gateway's caller secret) -> the auth layer
AuthFactory = Callable[[Mapping[str, int], str], AuthLayer]


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


@dataclass
class Launch:
    """What the stages of ``start_gateway`` share: ports, URLs, secrets, the services."""

    dir: Path
    secrets: Path
    keycloak: kc.Keycloak
    ca_file: Path
    ports: dict[str, int]
    replicas: dict[str, broker_router.BrokerRouterPorts]
    listen_port: int
    servers: list[GatewayServer]
    tracing: dict[str, Any]
    caller_secret: str
    caller_auth: dict[str, Any]
    discovery_token: str
    discovery_file: Path
    services: dict[str, Service] = field(default_factory=dict)
    started: list[Service] = field(default_factory=list)

    @property
    def gateway_host(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}"

    @property
    def metadata_url(self) -> str:
        return f"{self.gateway_url}/.well-known/oauth-protected-resource/mcp"

    def start(self, *names: str) -> None:
        """Start the services ``names`` in order, each once ready (stopped on a failure)."""
        for name in names:
            self.services[name].start()
            self.started.append(self.services[name])


def plan_launch(
    run_dir: Path,
    subdir: str,
    keycloak: kc.Keycloak,
    ca_file: Path,
    listen_port: int | None,
    broker_replicas: int,
    trace_collector: Jaeger | None,
) -> Launch:
    """Stage 1: the stack's folder and secrets, every port, the gateway's caller secret and the
    broker's discovery credential; nothing started."""
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
    servers = [
        GatewayServer(plan.name, plan.prefix, plan.hostname, ports[plan.service])
        for plan in SERVER_PLANS
    ]
    caller_secret = token_secrets.token_urlsafe(32)
    leak_scan.register_secret(caller_secret, "gateway caller secret")
    caller_auth = {
        "mode": "secret",
        "header": CALLER_HEADER,
        "secret_file": str(files.write_secret(secrets, "caller.secret", caller_secret)),
    }
    # The broker's discovery bearer: the backends accept it for listing only (never a call).
    discovery_token = f"broker-discovery-{token_secrets.token_urlsafe(24)}"
    leak_scan.register_secret(discovery_token, "broker discovery credential")
    discovery_file = files.write_secret(secrets, "discovery.credential", discovery_token)
    tracing: dict[str, Any] = (
        {"tracing": {"endpoint": trace_collector.otlp_http_traces_url, "sampling_ratio": 1.0}}
        if trace_collector is not None
        else {}
    )
    return Launch(
        dir=gw_dir,
        secrets=secrets,
        keycloak=keycloak,
        ca_file=ca_file,
        ports=ports,
        replicas=replicas,
        listen_port=listen_port,
        servers=servers,
        tracing=tracing,
        caller_secret=caller_secret,
        caller_auth=caller_auth,
        discovery_token=discovery_token,
        discovery_file=discovery_file,
    )


def add_backends_and_exchange(
    launch: Launch, clusters: Mapping[str, Cluster], extra_facade_clients: Mapping[str, str]
) -> None:
    """Stage 2 (configured, not started): server A's backend (cluster A), server B's (cluster B,
    through the cross-domain exchange) and the token exchange."""
    gw_dir, ports = launch.dir, launch.ports
    facade_secret = files.write_secret(launch.secrets, "facade-client.secret", FACADE_CLIENT_SECRET)
    for plan in SERVER_PLANS:
        config = files.write_yaml(
            gw_dir / f"{plan.service}.yaml",
            files.backend_config(
                plan,
                ports[plan.service],
                cluster=clusters[plan.cluster],
                gateway_url=launch.gateway_url,
                issuer=launch.keycloak.issuer(REALM_MCP),
                token_exchange_port=ports["token-exchange"],
                facade_secret=facade_secret,
                discovery_credential=launch.discovery_file,
            )
            | launch.tracing,
        )
        launch.services[plan.service] = Service(
            plan.service,
            [str(console_script("mcp-backend")), "serve", "--config", str(config)],
            f"http://127.0.0.1:{ports[plan.service]}/healthz",
            gw_dir / f"{plan.service}.log",
            ports[plan.service],
        )
    tx_cfg = files.write_yaml(
        gw_dir / "token-exchange.yaml",
        files.token_exchange_config(
            ports["token-exchange"],
            keycloak=launch.keycloak,
            ca_file=launch.ca_file,
            secrets=launch.secrets,
            facade_secret=facade_secret,
            extra_facade_clients=extra_facade_clients,
            metadata_url=launch.metadata_url,
            caller_auth=launch.caller_auth,
        )
        | launch.tracing,
    )
    launch.services["token-exchange"] = Service(
        "token-exchange",
        [str(console_script("mcp-token-exchange")), "serve", "--config", str(tx_cfg)],
        f"http://127.0.0.1:{ports['token-exchange']}/readyz",
        gw_dir / "token-exchange.log",
        ports["token-exchange"],
    )


def add_policy(
    launch: Launch,
    opa: OpaServer,
    policy_engine: str,
    wristband_form: str,
    policy_extra: Callable[[Mapping[str, int]], Mapping[str, Any]] | None,
) -> Path:
    """Stage 3a (configured, not started): the policy service, its catalogue listed from the
    running backends; returns the public key of the lists it signs (for the broker)."""
    gw_dir, port = launch.dir, launch.ports["policy"]
    signing_key, public_key = files.wristband_key(launch.secrets)
    catalogue_file = gw_dir / "catalogue.json"
    # listed with the discovery credential, as the broker does (no user token reaches a
    # backend directly: they accept only tokens exchanged for them)
    catalogue = {
        server.name: files.fetch_tools(
            f"http://127.0.0.1:{server.backend_port}/mcp", launch.discovery_token
        )
        for server in launch.servers
    }
    catalogue_file.write_text(json.dumps(catalogue, indent=1))
    settings = files.policy_config(
        port,
        keycloak=launch.keycloak,
        ca_file=launch.ca_file,
        engine=policy_engine,
        opa_url=opa.url,
        catalogue_file=catalogue_file,
        metadata_url=launch.metadata_url,
        caller_auth=launch.caller_auth,
        signing_key=signing_key,
        wristband_form=wristband_form,
        decision_log=gw_dir / "policy-decisions.jsonl",
    )
    policy_cfg = files.write_yaml(
        gw_dir / "policy.yaml",
        {
            **settings,
            **(policy_extra(launch.ports) if policy_extra is not None else {}),
            **launch.tracing,
        },
    )
    launch.services["policy"] = Service(
        "policy",
        [str(console_script("mcp-policy")), "serve", "--config", str(policy_cfg)],
        f"http://127.0.0.1:{port}/readyz",
        gw_dir / "policy.log",
        port,
    )
    return public_key


def add_brokers(launch: Launch, public_key: Path, session_store: str | None) -> Path:
    """Stage 3b (configured, not started): the real MCP Gateway broker/router, one process per
    replica, one signing key and one servers file (returned)."""
    servers_file, gateway_signing_key = broker_router.write_config(
        launch.dir, launch.servers, launch.secrets, credential=f"Bearer {launch.discovery_token}"
    )
    broker_env = broker_router.environment(
        signing_key=gateway_signing_key,
        trusted_header_key_pem=public_key.read_text(),
        resource=f"{launch.gateway_url}/mcp",
        issuer=launch.keycloak.issuer(REALM_MCP),
        session_store=session_store,
    )
    for name, replica_ports in launch.replicas.items():
        launch.services[name] = _broker_service(
            name,
            replica_ports,
            argv=broker_router.argv(
                servers_file,
                replica_ports,
                public_host=launch.gateway_host,
                private_host=launch.gateway_host,
            ),
            env=broker_env,
            log_path=launch.dir / f"{name}.log",
            server_count=len(launch.servers),
        )
    return servers_file


def start_envoy(
    launch: Launch, auth: AuthFactory, trace_collector: Jaeger | None
) -> envoy_proxy.EnvoyProxy:
    """Stage 4: Envoy (router ext_proc, the auth layer, routes to the broker and the servers)."""
    admin_port = free_port()
    bootstrap = envoy_config.bootstrap(
        listen_port=launch.listen_port,
        admin_port=admin_port,
        router_ports=[r.router for r in launch.replicas.values()],
        broker_ports=[r.broker for r in launch.replicas.values()],
        servers=launch.servers,
        auth=auth(launch.ports, launch.caller_secret),
        trace_collector_port=trace_collector.otlp_grpc_port if trace_collector else None,
    )
    return envoy_proxy.EnvoyProxy(
        launch.dir,
        envoy_config.render(bootstrap),
        "envoy-gateway",
        admin_port=admin_port,
        listen_port=launch.listen_port,
    ).start()
