"""Starting the local gateway stack (:class:`~.stack.LocalGateway`): :func:`start_stack` starts
everything (the demo: Jaeger, Keycloak, clusters A and B, then the gateway);
:func:`start_gateway` starts our services, the real broker/router and Envoy next to a testbed
that is already running (the pytest session fixtures), in stages: plan, the backends and the
token exchange, the policy service and the broker/router replicas, Envoy."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.testbed import keycloak as kc
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster, JWTIssuer
from tests.testbed.control_plane.start import start_clusters_parallel
from tests.testbed.identity_plan import (
    CLUSTER_A_AUDIENCES,
    CLUSTER_B_AUDIENCES,
    REALM_CLUSTER_B,
    REALM_MCP,
    IdentityPlan,
    new_plan,
)
from tests.testbed.jaeger import Jaeger
from tests.testbed.mcp_gateway import broker_router, envoy_auth
from tests.testbed.mcp_gateway import launch as launch_stages
from tests.testbed.mcp_gateway.envoy_auth import AuthLayer
from tests.testbed.mcp_gateway.launch import AuthFactory
from tests.testbed.mcp_gateway.seed import seed_clusters, wait_users_accepted
from tests.testbed.mcp_gateway.stack import (
    BROKER_ROUTER,
    CALLER_HEADER,
    SERVER_PLANS,
    LocalGateway,
    Progress,
    _quiet,
    _run_async,
)
from tests.testbed.opa_server import OpaServer
from tests.testbed.pki import CertificateAuthority


def plugin_auth_layer(ports: Mapping[str, int], caller_secret: str) -> AuthLayer:
    """The default auth layer: our token exchange, then our policy, as HTTP ext_authz filters;
    Envoy adds the gateway's caller credential to every check request."""
    return envoy_auth.plugin_auth(
        ports["token-exchange"],
        ports["policy"],
        check_headers=[{"key": CALLER_HEADER, "value": caller_secret}],
    )


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

    Stages: plan (ports, secrets), the backends and the token exchange, the policy service
    (its catalogue: the backends' real tool lists) and the broker/router replicas, Envoy.
    """
    if broker_replicas < 1:
        raise ValueError("broker_replicas must be at least 1")
    launch = launch_stages.plan_launch(
        run_dir, subdir, keycloak, ca_file, listen_port, broker_replicas, trace_collector
    )
    progress("seeding clusters A and B (RBAC for the demo users, a demo Deployment)")
    _run_async(seed_clusters([cluster_a, cluster_b]))
    _run_async(wait_users_accepted(keycloak, cluster_a))

    opa = OpaServer(launch.dir, load=[], name="opa-policy")
    try:
        if policy_engine == "opa":
            progress("starting OPA (policy engine)")
            opa.start()
        clusters = {"cluster-a": cluster_a, "cluster-b": cluster_b}
        launch_stages.add_backends_and_exchange(launch, clusters, extra_facade_clients or {})
        progress("starting the two MCP backends and the token exchange service")
        launch.start(*(plan.service for plan in SERVER_PLANS), "token-exchange")
        public_key = launch_stages.add_policy(
            launch, opa, policy_engine, wristband_form, policy_extra
        )
        servers_file = launch_stages.add_brokers(launch, public_key, session_store)
        progress("starting the policy service and the MCP Gateway broker/router (v0.9.0)")
        launch.start("policy", *launch.replicas)
        broker_router.refresh_routing_tables(
            servers_file, [launch.services[name].log_path for name in launch.replicas]
        )
        progress("starting Envoy (router ext_proc, auth, routes to the broker and the servers)")
        envoy = launch_stages.start_envoy(launch, auth, trace_collector)
    except BaseException:
        for svc in reversed(launch.started):
            svc.stop()
        opa.stop()
        raise
    return LocalGateway(
        run_dir=run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        opa=opa,
        services=launch.services,
        envoy=envoy,
        ca_file=ca_file,
        servers=launch.servers,
        broker_port=launch.replicas[BROKER_ROUTER].broker,
        subdir=subdir,
        caller_secret=launch.caller_secret,
        brokers=launch.replicas,
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
