"""Fixtures of the tests of our ``manifests/gateway/`` against the real MCP Gateway controller,
and the real broker on the configuration that controller writes.

On cluster A: the MCP Gateway installed as its Helm chart installs it with the Kind values
(``tests/testbed/mcp_gateway_controller.py``: CRDs, RBAC, MCPGatewayExtension, ReferenceGrant, the
Kind Gateway), the real controller running as the chart's Deployment would (its ServiceAccount's
token, the chart's ClusterRole), kwok nodes so the broker Deployment it creates gets a Ready pod.
The testbed writes the status Istio would (``tests/testbed/gateway_api_status.py``: Gateway
programmed, routes accepted; it refuses nothing). Then the rendered ``manifests/gateway``
kustomization and the base's ``mcp-backend`` Service (the controller reads the route's backend
Service) are applied for real, and:

* the controller accepts our MCPServerRegistration (``Ready``, "config written successfully"), and
  writes the broker configuration (Secret ``mcp-system/mcp-gateway-config``) with our server:
  name = the backend's Keycloak client id (the ``x-mcp-servername`` our token exchange and policy
  key on), URL of the route's backend Service and the registration's path, the route's hostname,
  the prefix, the discovery credential; the MCPGatewayExtension is Ready, the EnvoyFilter and the
  broker Deployment exist; the backend's Host check (the base config) accepts the two Hosts
  that configuration makes the gateway send (the URL's host:port for the broker's discovery,
  the hostname for the router's calls);
* the real ``mcp-broker-router`` runs as that broker Deployment's pod would (its command line,
  environment and mounted config, ``tests/testbed/pod_process.py``), with ONE documented change to
  the config: the in-cluster Service URL (cluster DNS does not resolve here) maps to the testbed's
  ``mcp-backend`` (:data:`SERVICE_URL`). Through the ``mcp`` client with a real user token, its
  ``tools/list`` is the backend's tools, each with the registration's prefix;
* the controller refuses a registration whose route does not exist (``Ready=False``, the reason
  named) and removes a deleted registration's server from the config;
* gateway sessions on Redis (issue 17 item 3): the Kind values name a session store Secret, which
  the controller injects as the broker's ``CACHE_CONNECTION_STRING`` (here the Secret holds the
  testbed Redis' URL, so the broker run as the pod connects to a real Redis); the
  ``components/gateway-sessions`` HPA scales the controller's broker Deployment to two replicas
  (cluster A's real HPA controller) and the controller's next update of that Deployment keeps
  them; the component's PodDisruptionBudget and Redis NetworkPolicy select its pods.

The fixtures are package-scoped: one controller, one registration, one backend and one broker
serve every test of this folder (``test_registration.py``, ``test_serving_broker.py``,
``test_session_store.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes_asyncio import client as k8s

from tests.manifests import mcp_gateway_install, render
from tests.manifests.gateway_controller.controller_state import (
    BROKER_DEPLOYMENT,
    GATEWAY,
    SERVICE_URL,
    SESSION_STORE_DB,
    broker_config,
    condition,
    discovery_credential,
    get_custom,
    servers_by_name,
    wait_for,
)
from tests.manifests.kube_apply import KubeApplier
from tests.manifests.rendered_objects import Obj, config_of, find
from tests.testbed import build, gateway_api_status, paths, pod_process, process
from tests.testbed.cluster import Cluster
from tests.testbed.mcp_gateway_controller import GatewayController, install
from tests.testbed.ports import free_port
from tests.testbed.redis_server import RedisServer


def session_store_secret(extension: Obj, connection_string: str) -> Obj:
    """The Secret the extension's ``sessionStore`` names, as the controller wants it (label, key),
    holding the testbed Redis' URL (the Kind flow's names the in-cluster Redis)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": extension["spec"]["sessionStore"]["secretName"],
            "namespace": extension["metadata"]["namespace"],
            "labels": {"mcp.kuadrant.io/secret": "true"},
        },
        "stringData": {"CACHE_CONNECTION_STRING": connection_string},
    }


def trusted_headers_secret(namespace: str) -> Obj:
    """The public half of a fresh P-256 key, where the Kind values point the extension (in a
    deployment: the policy service's signing key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kmg-trusted-headers", "namespace": namespace},
        "stringData": {"key": pem.decode()},
    }


@pytest.fixture(scope="package")
async def gateway_objects() -> list[Obj]:
    """The rendered ``manifests/gateway`` kustomization."""
    return await asyncio.to_thread(render.render, "gateway")


@pytest.fixture(scope="package")
async def controller(
    cluster_a: Cluster, kwok_nodes: list[str], testbed_run_dir: Path, redis_server: RedisServer
) -> AsyncIterator[GatewayController]:
    """The MCP Gateway installed on cluster A and its controller running (stopped afterwards)."""
    chart = await install(cluster_a)
    extension = find(chart, "MCPGatewayExtension")
    store = session_store_secret(extension, redis_server.connection_string(SESSION_STORE_DB))
    async with KubeApplier(cluster_a) as api:
        await api.apply(trusted_headers_secret(extension["metadata"]["namespace"]), dry_run=False)
        await api.apply(store, dry_run=False)
    running = GatewayController(
        cluster_a,
        mcp_gateway_install.controller_deployment(chart),
        testbed_run_dir / "mcp-gateway-controller",
    )
    await running.prepare()
    await asyncio.to_thread(running.start)
    # Istio's part: the Gateway accepted and programmed (listener status entries exist)
    await gateway_api_status.program_gateway(cluster_a, *GATEWAY, attached_routes={"mcps": 1})
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
async def registered(
    controller: GatewayController, cluster_a: Cluster, gateway_objects: list[Obj]
) -> dict[str, Any]:
    """Our gateway objects (and the backend Service they route to) applied; the route accepted;
    the registration Ready. Returns the broker config the controller wrote."""
    base = await asyncio.to_thread(render.render, "base")
    backend_ns = find(base, "Namespace", "kmg-system")
    backend_svc = find(base, "Service", "mcp-backend")
    route = find(gateway_objects, "HTTPRoute")
    async with KubeApplier(cluster_a) as api:
        for obj in [backend_ns, backend_svc, *gateway_objects]:
            await api.apply(obj, dry_run=False)
    await gateway_api_status.accept_route(
        cluster_a, route["metadata"]["namespace"], route["metadata"]["name"]
    )
    reg = find(gateway_objects, "MCPServerRegistration")
    namespace, name = reg["metadata"]["namespace"], reg["metadata"]["name"]
    async with cluster_a.admin_client() as api:

        async def ready() -> Obj | None:
            obj = await get_custom(api, "mcpserverregistrations", namespace, name)
            return obj if condition(obj, "Ready").get("status") == "True" else None

        await wait_for(
            f"MCPServerRegistration {namespace}/{name} Ready", ready, log=controller.tail
        )
        return await broker_config(api)


@pytest.fixture(scope="package")
async def backend_url(
    cluster_a: Cluster, testbed_run_dir: Path, gateway_objects: list[Obj]
) -> AsyncIterator[str]:
    """The real ``mcp-backend`` serving cluster A on a free port, with the token binding of
    ``manifests/base`` and, as its discovery credential, the value of the registration's
    credentialRef Secret (what the controller hands the broker)."""
    from tests.testbed.mcp_gateway.stack import console_script

    folder = testbed_run_dir / "mcp-gateway-controller"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = await asyncio.to_thread(render.render, "base")
    binding_keys = ("accepted_audiences", "authorized_parties", "opaque_tokens")
    manifest_config = config_of(base, "mcp-backend")
    discovery = folder / "discovery.token"
    discovery.write_text(discovery_credential(gateway_objects))
    discovery.chmod(0o600)
    config = folder / "backend.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": port,
                **{key: manifest_config[key] for key in binding_keys},
                "discovery_credential_file": str(discovery),
                "helm_binary": str(build.binary("helm")),
                "clusters": [
                    {
                        "name": cluster_a.name,
                        "server": cluster_a.server,
                        "ca_file": str(cluster_a.ca_file),
                        "default": True,
                    }
                ],
            }
        )
    )
    proc = process.ManagedProcess(
        "mcp-backend",
        [console_script("mcp-backend"), "serve", "--config", config],
        folder / "backend.log",
        env={"PYTHONPATH": str(paths.REPO_ROOT)},
    ).start()
    try:
        await asyncio.to_thread(
            proc.wait_until,
            lambda: process.http_ok(f"http://127.0.0.1:{port}/healthz"),
            timeout=90,
            what="ready",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="package")
async def broker(
    registered: dict[str, Any], backend_url: str, cluster_a: Cluster, testbed_run_dir: Path
) -> AsyncIterator[str]:
    """The real broker/router run as the controller's broker Deployment's pod; its /mcp URL."""
    folder = testbed_run_dir / "mcp-gateway-controller" / "broker"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mapping = pod_process.PodMapping(
        executables={"./mcp_gateway": build.binary("mcp-broker-router")},
        flag_values={"--mcp-broker-public-address": f"127.0.0.1:{port}"},
        # listeners the pod leaves at 0.0.0.0 defaults (its own network namespace)
        extra_flags=(
            f"--mcp-router-address=127.0.0.1:{free_port()}",
            f"--metrics-addr=127.0.0.1:{free_port()}",
        ),
    )
    async with cluster_a.admin_client() as api:
        deployment = api.sanitize_for_serialization(
            await k8s.AppsV1Api(api).read_namespaced_deployment(
                BROKER_DEPLOYMENT[1], BROKER_DEPLOYMENT[0]
            )
        )
        pod = await pod_process.materialize(api, deployment, mapping, folder)
    # the config the pod would mount, with the one documented change (SERVICE_URL -> backend)
    config_dir = pod.volumes["/config"]
    config = yaml.safe_load((config_dir / "config.yaml").read_text())
    assert servers_by_name(config) == servers_by_name(registered), "the mounted config differs"
    for server in config["servers"]:
        assert server["url"].startswith(SERVICE_URL), server["url"]
        server["url"] = backend_url + server["url"][len(SERVICE_URL) :]
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert {"GATEWAY_SIGNING_KEY", "TRUSTED_HEADER_PUBLIC_KEY", "CACHE_CONNECTION_STRING"} <= set(
        pod.env
    )
    proc = process.ManagedProcess("mcp-broker-router", pod.argv, folder / "broker.log", env=pod.env)
    proc.start()
    (folder / "argv.json").write_text(json.dumps(pod.argv, indent=1))
    try:
        await asyncio.to_thread(
            proc.wait_until,
            lambda: process.http_ok(f"http://127.0.0.1:{port}/readyz"),
            timeout=60,
            what="ready",
        )
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.stop()
