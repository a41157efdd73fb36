"""Gateway sessions on Redis (issue 17 item 3): the broker pod connects to the session store the
extension's Secret names, and the ``components/gateway-sessions`` HPA scales the controller's
broker Deployment to two replicas that the controller's next update keeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.manifests import mcp_gateway_install, render
from tests.manifests.gateway_controller.controller_state import (
    BROKER_DEPLOYMENT,
    GROUP,
    SESSION_STORE_DB,
    VERSION,
    condition,
    env_refs,
    get_custom,
    wait_for,
)
from tests.manifests.kube_apply import KubeApplier
from tests.manifests.rendered_objects import find
from tests.testbed.cluster import Cluster
from tests.testbed.mcp_gateway_controller import GatewayController
from tests.testbed.redis_server import RedisServer


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
        refs = env_refs(deployment)
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
