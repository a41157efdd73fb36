"""Our ``manifests/gateway/`` against the real MCP Gateway controller, and the real broker on the
configuration that controller writes.

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
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend import config as backend_config
from mcp_backend.transport.host_origin_guard import host_origin_rule
from tests.e2e.mcp_http import session
from tests.manifests import mcp_gateway_install, render
from tests.manifests.kube_apply import KubeApplier
from tests.testbed import build, gateway_api_status, paths, pod_process, process
from tests.testbed.cluster import Cluster
from tests.testbed.fixtures_identity import SessionKeycloak
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.mcp_gateway_controller import GatewayController, install
from tests.testbed.ports import free_port
from tests.testbed.redis_server import RedisServer

Obj = dict[str, Any]

GROUP, VERSION = "mcp.kuadrant.io", "v1"
WAIT = 90.0
CONFIG_SECRET = ("mcp-system", "mcp-gateway-config")
BROKER_DEPLOYMENT = ("mcp-system", "mcp-gateway")  # named by the controller (broker_router.go)
GATEWAY = ("gateway-system", "mcp-gateway")
# The only change between the broker config the controller wrote and the one the broker runs on:
# the in-cluster URL of mcp-backend's Service (no cluster DNS here) -> the testbed's mcp-backend.
SERVICE_URL = "http://mcp-backend.kmg-system.svc.cluster.local:8080"
# The broker's own meta-tools (internal/broker: discovery.go, tags_handler.go), listed beside the
# upstream servers' tools.
BROKER_META_TOOLS = {"discover_tools", "select_tools", "list_tags", "filter_tools_by_tags"}
# The testbed Redis' database for the broker run as the controller's pod (the replicated local
# gateway uses 2, the token exchange 0): its connections are told apart by it.
SESSION_STORE_DB = 3


# -- helpers -------------------------------------------------------------------------------------
async def wait_for(
    what: str, probe: Callable[[], Any], *, within: float = WAIT, log: Callable[[], str] = str
) -> Any:
    """Poll the async ``probe`` until it returns something truthy; fail with ``what`` and the
    last value seen (and the controller's log tail) otherwise."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} not within {within:.0f}s; last seen: {last!r}\n{log()}")


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


async def get_custom(api: k8s.ApiClient, plural: str, namespace: str, name: str) -> Obj:
    return dict(
        await k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    )


async def broker_config(api: k8s.ApiClient) -> dict[str, Any]:
    secret = await k8s.CoreV1Api(api).read_namespaced_secret(CONFIG_SECRET[1], CONFIG_SECRET[0])
    return dict(yaml.safe_load(base64.b64decode(secret.data["config.yaml"])))


def discovery_credential(gateway_objects: list[Obj]) -> str:
    """The value of the Secret our MCPServerRegistration names as its credentialRef."""
    reg = find(gateway_objects, "MCPServerRegistration")
    ref = reg["spec"]["credentialRef"]
    secret = next(
        o
        for o in gateway_objects
        if o["kind"] == "Secret"
        and o["metadata"]["name"] == ref["name"]
        and o["metadata"]["namespace"] == reg["metadata"]["namespace"]
    )
    return str(secret["stringData"][ref["key"]])


def servers_by_name(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in config.get("servers") or []}


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


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


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def gateway_objects() -> list[Obj]:
    """The rendered ``manifests/gateway`` kustomization."""
    return await asyncio.to_thread(render.render, "gateway")


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


# -- the controller --------------------------------------------------------------------------------
async def test_controller_accepts_our_registration_and_writes_the_broker_config(
    controller: GatewayController,
    registered: dict[str, Any],
    gateway_objects: list[Obj],
    cluster_a: Cluster,
) -> None:
    reg = find(gateway_objects, "MCPServerRegistration")
    route = find(gateway_objects, "HTTPRoute")
    credential = find(gateway_objects, "Secret", reg["spec"]["credentialRef"]["name"])
    namespace, name = reg["metadata"]["namespace"], reg["metadata"]["name"]
    async with cluster_a.admin_client() as api:
        stored = await get_custom(api, "mcpserverregistrations", namespace, name)
        ready = condition(stored, "Ready")
        assert ready["status"] == "True", ready
        assert ready["message"] == "config written successfully"
        # the server the broker federates: what the controller derived from our objects
        server = servers_by_name(registered)[f"{namespace}/{name}"]
        # the name is the x-mcp-servername the router sets: our backend's Keycloak client id
        assert server["name"] == BACKEND_AUDIENCE
        (rule,) = route["spec"]["rules"]
        (backend,) = rule["backendRefs"]
        assert server["url"] == (
            f"http://{backend['name']}.{backend['namespace']}.svc.cluster.local:"
            f"{backend['port']}{reg['spec']['path']}"
        )
        assert server["url"].startswith(SERVICE_URL)
        assert server["hostname"] == route["spec"]["hostnames"][0]
        assert server["prefix"] == reg["spec"]["prefix"] == "kube_"
        assert server["credential"] == credential["stringData"]["token"]
        assert server["state"] == "Enabled"
        # the extension the chart installed is Ready: broker Deployment, EnvoyFilter, listener
        extension = await get_custom(
            api, "mcpgatewayextensions", "mcp-system", "mcp-gateway-extension"
        )
        assert condition(extension, "Ready").get("status") == "True", extension.get("status")
        filters = await k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            "networking.istio.io", "v1alpha3", GATEWAY[0], "envoyfilters"
        )
        (envoy_filter,) = filters["items"]
        patch = envoy_filter["spec"]["configPatches"][0]
        assert patch["patch"]["operation"] == "INSERT_FIRST"
        ext_proc = patch["patch"]["value"]["typed_config"]
        assert ext_proc["failure_mode_allow"] is False
        assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            "outbound|50051||mcp-gateway.mcp-system.svc.cluster.local"
        )
        # our route is marked as in use by a registration (the controller's HTTPRoute status)
        routes = k8s.CustomObjectsApi(api)
        stored_route = await routes.get_namespaced_custom_object(
            "gateway.networking.k8s.io",
            "v1",
            route["metadata"]["namespace"],
            "httproutes",
            route["metadata"]["name"],
        )
        programmed = [
            c
            for parent in stored_route["status"]["parents"]
            for c in parent["conditions"]
            if c["type"] == "Programmed"
        ]
        assert [c["reason"] for c in programmed] == ["InUseByMCPServerRegistration"]


async def test_backend_accepts_the_hosts_the_controller_configured(
    registered: dict[str, Any], tmp_path: Path
) -> None:
    """The backend's Host check (DNS rebinding protection) with the base config accepts what the
    gateway sends under the configuration the real controller wrote: the broker's discovery comes
    with the server URL's host and port, the router's calls (and their hairpin initialize) with
    the server's hostname as :authority. Anything else is refused."""
    base = await asyncio.to_thread(render.render, "base")
    config = next(
        o
        for o in base
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("mcp-backend-config")
    )
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    rule = host_origin_rule(backend_config.load_settings(path, environ={}))
    server = servers_by_name(registered)[BACKEND_AUDIENCE]
    discovery_host = urlsplit(server["url"]).netloc
    assert discovery_host == "mcp-backend.kmg-system.svc.cluster.local:8080"
    for host in (discovery_host, server["hostname"]):
        assert rule.refusal(host, None) is None, f"the backend refuses the gateway's Host {host}"
    for host in ("evil.example", "mcp-backend.evil.example:8080", "10.244.0.7:8080"):
        assert rule.refusal(host, None) is not None, host


async def test_controller_refuses_a_registration_without_its_route(
    controller: GatewayController,
    registered: dict[str, Any],
    gateway_objects: list[Obj],
    cluster_a: Cluster,
) -> None:
    """A registration naming a route that does not exist is not Ready and never reaches the
    broker config; deleting a registration removes its server from the config."""
    broken = copy.deepcopy(find(gateway_objects, "MCPServerRegistration"))
    broken["metadata"] = {"name": "kubernetes-mcp-no-route", "namespace": "mcp-test"}
    broken["spec"]["targetRef"]["name"] = "no-such-route"
    broken["spec"]["prefix"] = "broken_"
    namespace, name = "mcp-test", "kubernetes-mcp-no-route"
    async with KubeApplier(cluster_a) as applier:
        await applier.apply(broken, dry_run=False)
    async with cluster_a.admin_client() as api:

        async def refused() -> dict[str, Any]:
            obj = await get_custom(api, "mcpserverregistrations", namespace, name)
            return condition(obj, "Ready")

        ready = await wait_for("a Ready condition", refused, log=controller.tail)
        assert ready["status"] == "False"
        assert "no-such-route" in ready["message"]
        assert f"{namespace}/{name}" not in servers_by_name(await broker_config(api))
        assert BACKEND_AUDIENCE in servers_by_name(await broker_config(api))
        # deletion: the controller's finalizer removes the server, then lets the object go
        objects = k8s.CustomObjectsApi(api)
        await objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "mcpserverregistrations", name
        )

        async def gone() -> bool:
            try:
                await get_custom(api, "mcpserverregistrations", namespace, name)
            except ApiException as exc:
                return exc.status == 404
            return False

        await wait_for("the deleted registration gone", gone, log=controller.tail)


# -- the broker on that configuration ----------------------------------------------------------
@pytest.fixture(scope="module")
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
    manifest_config = yaml.safe_load(
        next(
            o
            for o in base
            if o["kind"] == "ConfigMap" and "mcp-backend-config" in o["metadata"]["name"]
        )["data"]["config.yaml"]
    )
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


@pytest.fixture(scope="module")
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


async def test_broker_lists_our_backend_tools_with_the_registration_prefix(
    broker: str, backend_url: str, keycloak: SessionKeycloak, registered: dict[str, Any]
) -> None:
    """The broker discovers through the backend's token binding with the credential the
    controller gave it (issue 14: the backend takes no token that is not exchanged for it, and
    the broker's discovery bearer for listing only)."""
    token = await keycloak.auser_token("mcp", "mcp")
    exchanged = (await keycloak.aexchange(token, audience=BACKEND_AUDIENCE))["access_token"]
    async with session(f"{backend_url}/mcp", exchanged) as direct:
        backend_tools = {t.name for t in (await direct.list_tools()).tools}
    assert backend_tools, "the backend lists no tools"
    prefix = servers_by_name(registered)[BACKEND_AUDIENCE]["prefix"]
    expected = {prefix + name for name in backend_tools}

    async def federated() -> set[str]:
        # protocol negotiated as a current client does (server/discover): the broker lists a
        # server's tools to the clients of the protocol it negotiated with that server
        async with session(broker, token, mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
        return names if expected <= names else set()

    names = await wait_for("the broker listing the backend's tools", federated, within=60)
    assert names - expected <= BROKER_META_TOOLS, f"unexpected tools {names - expected}"
    assert not names & backend_tools, "an un-prefixed backend tool leaked into the list"


async def test_the_broker_is_the_workload_the_manifests_admit(
    registered: dict[str, Any], cluster_a: Cluster
) -> None:
    """Issue 14's layer-4 and mesh rules name the broker by namespace + pod labels
    (NetworkPolicy) and by ServiceAccount (Istio principal): they are the ones of the Deployment
    the real controller created, so the rules admit the broker's discovery and nothing else."""
    async with cluster_a.admin_client() as api:
        deployment = await k8s.AppsV1Api(api).read_namespaced_deployment(
            BROKER_DEPLOYMENT[1], BROKER_DEPLOYMENT[0]
        )
    labels = deployment.spec.template.metadata.labels or {}
    account = deployment.spec.template.spec.service_account_name
    base = await asyncio.to_thread(render.render, "base")
    backend_rule = next(
        o
        for o in base
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "mcp-backend-from-gateway"
    )
    peers = [peer for rule in backend_rule["spec"]["ingress"] for peer in rule["from"]]
    broker_peers = [
        p
        for p in peers
        if p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == BROKER_DEPLOYMENT[0]
    ]
    assert len(broker_peers) == 1, peers
    assert broker_peers[0]["podSelector"]["matchLabels"].items() <= labels.items()
    istio = await asyncio.to_thread(render.render, "overlays/istio-ext-authz")
    backend_allow = next(
        o
        for o in istio
        if o["kind"] == "AuthorizationPolicy" and o["metadata"]["name"] == "mcp-backend-callers"
    )
    principals = {
        p
        for rule in backend_allow["spec"]["rules"]
        for f in rule["from"]
        for p in f["source"]["principals"]
    }
    assert f"cluster.local/ns/{BROKER_DEPLOYMENT[0]}/sa/{account}" in principals


# -- gateway sessions on Redis, several broker replicas ------------------------------------------
def _env_refs(deployment: Any) -> dict[str, tuple[str, str]]:
    """The broker container's env vars read from Secrets: name -> (Secret, key)."""
    (container,) = deployment.spec.template.spec.containers
    return {
        e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
        for e in container.env or []
        if e.value_from is not None and e.value_from.secret_key_ref is not None
    }


async def test_the_broker_pod_connects_to_the_session_store_the_secret_names(
    broker: str, redis_server: RedisServer
) -> None:
    """The broker run as the controller's pod got CACHE_CONNECTION_STRING from the session store
    Secret (it PINGs the store at start and would not have become ready without it) and holds a
    connection to that Redis database."""
    clients = redis_server.client().client_list()
    assert [c for c in clients if c.get("db") == str(SESSION_STORE_DB)], clients


async def test_broker_replicas_from_the_component_share_the_session_store(
    registered: dict[str, Any], controller: GatewayController, cluster_a: Cluster
) -> None:
    """The Deployment the real controller made reads the session store and the signing key from
    Secrets (every replica gets the same), the component's HPA scales it to two replicas (cluster
    A's HPA controller), and the controller's next update of the Deployment (a new log level)
    keeps the count; the PodDisruptionBudget and the Redis NetworkPolicy select its pods."""
    namespace, name = BROKER_DEPLOYMENT
    chart = await asyncio.to_thread(mcp_gateway_install.render)
    extension = find(chart, "MCPGatewayExtension")
    overlay = await asyncio.to_thread(render.render, "overlays/kind")
    component = [o for o in overlay if o["metadata"].get("namespace") == namespace]
    assert {o["kind"] for o in component} == {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    hpa = find(component, "HorizontalPodAutoscaler")
    pdb = find(component, "PodDisruptionBudget")
    apps = k8s.AppsV1Api
    async with cluster_a.admin_client() as api:
        deployment = await apps(api).read_namespaced_deployment(name, namespace)
        refs = _env_refs(deployment)
        assert refs["CACHE_CONNECTION_STRING"] == (
            extension["spec"]["sessionStore"]["secretName"],
            "CACHE_CONNECTION_STRING",
        )
        assert refs["GATEWAY_SIGNING_KEY"] == ("mcp-gateway-session-signing-key", "key")
        labels = deployment.spec.template.metadata.labels
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        (metric,) = hpa["spec"]["metrics"]
        (container,) = deployment.spec.template.spec.containers
        assert metric["containerResource"]["container"] == container.name
        redis_rule = find(overlay, "NetworkPolicy", "redis-from-mcp-broker")
        (peer,) = [p for rule in redis_rule["spec"]["ingress"] for p in rule["from"]]
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": namespace
        }
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()

        async def replicas(count: int) -> Any:
            got = await apps(api).read_namespaced_deployment(name, namespace)
            ready = (got.status.ready_replicas or 0) == count
            return got if got.spec.replicas == count and ready else None

        async def log_level(flag: str | None) -> Any:
            got = await apps(api).read_namespaced_deployment(name, namespace)
            (cmd,) = [c.command for c in got.spec.template.spec.containers]
            present = any(arg.startswith("--log-level") for arg in cmd)
            wanted = flag in cmd if flag else not present
            return got if wanted else None

        ext_path = (
            f"/apis/{GROUP}/{VERSION}/namespaces/{extension['metadata']['namespace']}"
            f"/mcpgatewayextensions/{extension['metadata']['name']}"
        )

        async def set_log_level(level: str | None) -> None:
            code, text = await asyncio.to_thread(
                cluster_a.admin_request,
                "PATCH",
                ext_path,
                {"spec": {"logLevel": level}},  # null removes the field
                content_type="application/merge-patch+json",
            )
            assert code == 200, text

        async with KubeApplier(cluster_a) as applier:
            for obj in component:
                await applier.apply(obj, dry_run=False)
        try:
            await wait_for("the HPA scaling the broker to 2 Ready replicas", lambda: replicas(2))
            await set_log_level("warn")
            updated = await wait_for(
                "the controller updating the broker Deployment", lambda: log_level("--log-level=4")
            )
            assert updated.spec.replicas == 2, "the controller's update reset the replica count"
            await wait_for("both replicas Ready after the update", lambda: replicas(2))
            extension_now = await get_custom(
                api, "mcpgatewayextensions", namespace, extension["metadata"]["name"]
            )
            assert condition(extension_now, "Ready").get("status") == "True"
        finally:
            await set_log_level(None)
            await wait_for("the log level flag removed again", lambda: log_level(None))
            autoscaling = k8s.AutoscalingV2Api(api)
            await autoscaling.delete_namespaced_horizontal_pod_autoscaler(name, namespace)
            await k8s.PolicyV1Api(api).delete_namespaced_pod_disruption_budget(name, namespace)
            await apps(api).patch_namespaced_deployment_scale(
                name, namespace, {"spec": {"replicas": 1}}
            )
