"""The real MCP Gateway controller on our ``manifests/gateway`` objects: it accepts our
MCPServerRegistration and writes the broker configuration with our server, the backend's Host
check accepts the Hosts that configuration makes the gateway send, and a registration without its
route is refused (and a deleted one removed from the config).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend.transport.host_origin_guard import host_origin_rule
from tests.manifests import render
from tests.manifests.gateway_controller.controller_state import (
    GATEWAY,
    GROUP,
    SERVICE_URL,
    VERSION,
    broker_config,
    condition,
    get_custom,
    servers_by_name,
    wait_for,
)
from tests.manifests.kube_apply import KubeApplier
from tests.manifests.rendered_objects import Obj, find, load_backend
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.mcp_gateway_controller import GatewayController


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
    rule = host_origin_rule(load_backend(base, tmp_path))
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
