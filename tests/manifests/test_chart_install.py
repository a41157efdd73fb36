"""A real ``helm install`` and ``helm upgrade`` of the chart into testbed cluster A.

The README's three commands, run for real: the namespace of ``manifests/base/namespace.yaml``
(Pod Security ``restricted`` enforced, renamed for the test), the Secrets and ConfigMap the
services read, then ``helm install --wait`` of ``examples/kuadrant.yaml`` (the gateway's
namespaces moved to test namespaces) with the testbed's helm against cluster A, whose real CRDs
(Gateway API, Kuadrant, MCP Gateway) take the AuthPolicies, the route and the registration. kwok
runs the pods (no image is pulled: the pods become Running and Ready on the fake nodes), so what
is checked is Kubernetes' side: admission (Pod Security), scheduling with the required spread over
the two nodes, the HPAs scaling each service to its minimum, every Deployment reaching its desired
state. Then ``helm upgrade --reuse-values`` from those values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes_asyncio import client as k8s

from tests.manifests import chart
from tests.manifests.chart import HelmError, Obj
from tests.manifests.kube_apply import KubeApplier
from tests.testbed import paths
from tests.testbed.cluster import Cluster

NS = "kmgt-helm"
REG_NS = "kmgt-helm-mcp-test"
BROKER_NS = "kmgt-helm-mcp-system"
GATEWAY_NS = "kmgt-helm-gateway-system"
AUTHORINO_NS = "kmgt-helm-kuadrant-system"
SERVER = f"{REG_NS}/kubernetes-mcp"
SERVICES = ("mcp-backend", "token-exchange", "policy")
MIN_REPLICAS = 2  # every service's autoscaling.minReplicas in values.yaml
DESIRED_TIMEOUT = 180.0
HELM_TIMEOUT = "5m"

# examples/kuadrant.yaml with the gateway's namespaces moved to test namespaces; the server name
# follows the registration's namespace, so the lists that must contain it are set too (the chart
# refuses the install otherwise, see test_chart.py)
OVERRIDES: dict[str, Any] = {
    "registration.namespace": REG_NS,
    "broker.namespace": BROKER_NS,
    "gateway.namespace": GATEWAY_NS,
    "networkPolicies.authorinoNamespace": AUTHORINO_NS,
    "mcpBackend.config.accepted_audiences": [SERVER],
    "tokenExchange.config.ext_authz.targets": [SERVER],
}
DENY_ENTRY = {
    "servers": ["*"],
    "tools": ["pods_delete"],
    "groups": ["mcp-interns"],
    "reason": "interns may not delete pods",
}


def _secret(name: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def prerequisites(cluster: Cluster) -> list[Obj]:
    """What the README's second command applies: the objects the chart names but never holds
    (test values, never real secrets)."""
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [
        _secret("gateway-caller-secret", {"secret": "helm-test-caller-secret-0123456789"}),
        _secret(
            "token-exchange-credentials",
            {
                name: f"helm-test-{name}"
                for name in (
                    "sts-mcp-client-secret",
                    "sts-cluster-b-client-secret",
                    "facade-mcp-backend",
                    "facade-authorino",
                )
            },
        ),
        _secret("policy-signing-key", {"key.pem": key.decode()}),
        _secret("redis-auth", {"password": "helm-test-redis-password"}),
        _secret("token-cache-encryption", {"keys": "helm-test-token-cache-key-0123456789abcdef"}),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "keycloak-ca", "namespace": NS},
            "data": {"ca.crt": cluster.ca_file.read_text()},
        },
    ]


def release_namespace() -> Obj:
    """manifests/base/namespace.yaml (the README's first command) under the test's name."""
    (ns,) = [
        d
        for d in yaml.safe_load_all(
            (paths.REPO_ROOT / "manifests" / "base" / "namespace.yaml").read_text()
        )
        if d
    ]
    ns["metadata"]["name"] = NS
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    return dict(ns)


async def helm(cluster: Cluster, *argv: str) -> str:
    return await asyncio.to_thread(chart.helm, list(argv), kubeconfig=cluster.admin_kubeconfig)


def install_args() -> list[str]:
    return chart.value_args([chart.EXAMPLES_DIR / "kuadrant.yaml"], OVERRIDES)


@pytest.fixture(scope="module")
async def installed(
    cluster_a: Cluster, applier: KubeApplier, kwok_nodes: list[str]
) -> AsyncIterator[str]:
    """The release installed with ``--wait``; its ``helm install`` output. Uninstalled (and the
    test namespaces deleted) afterwards."""
    assert len(kwok_nodes) >= 2
    await applier.apply(release_namespace(), dry_run=False)
    applier.created_namespaces.add(NS)
    for name in (BROKER_NS, GATEWAY_NS):
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await applier.apply(ns, dry_run=False)
        applier.created_namespaces.add(name)
    for obj in prerequisites(cluster_a):
        await applier.apply(obj, dry_run=False)
    out = await helm(
        cluster_a,
        "install",
        chart.RELEASE,
        str(chart.CHART),
        "--namespace",
        NS,
        "--wait",
        "--timeout",
        HELM_TIMEOUT,
        *install_args(),
    )
    try:
        yield out
    finally:
        await helm(cluster_a, "uninstall", chart.RELEASE, "--namespace", NS, "--wait")


async def deployments(cluster: Cluster) -> dict[str, k8s.V1Deployment]:
    async with cluster.admin_client() as api:
        items = (await k8s.AppsV1Api(api).list_namespaced_deployment(NS)).items
    return {d.metadata.name: d for d in items}


def settled(d: k8s.V1Deployment, replicas: int) -> bool:
    """Desired state: the wanted count, every replica of the current template ready."""
    status = d.status
    return bool(
        d.spec.replicas == replicas
        and (status.observed_generation or 0) >= d.metadata.generation
        and status.replicas == replicas
        and status.updated_replicas == replicas
        and status.ready_replicas == replicas
        and status.available_replicas == replicas
    )


async def wait_settled(cluster: Cluster, want: dict[str, int]) -> dict[str, k8s.V1Deployment]:
    deadline = time.monotonic() + DESIRED_TIMEOUT
    while True:
        current = await deployments(cluster)
        if all(name in current and settled(current[name], n) for name, n in want.items()):
            return current
        if time.monotonic() > deadline:
            state = {
                n: (d.spec.replicas, d.status.ready_replicas, d.status.updated_replicas)
                for n, d in current.items()
            }
            raise AssertionError(f"not at the desired state within {DESIRED_TIMEOUT}s: {state}")
        await asyncio.sleep(1.0)


async def pods_of(cluster: Cluster, service: str) -> list[k8s.V1Pod]:
    async with cluster.admin_client() as api:
        pods = await k8s.CoreV1Api(api).list_namespaced_pod(
            NS, label_selector=f"app.kubernetes.io/name={service}"
        )
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


async def test_install_reaches_every_deployments_desired_state(
    installed: str, cluster_a: Cluster, kwok_nodes: list[str]
) -> None:
    assert "STATUS: deployed" in installed
    assert "REVISION: 1" in installed
    # the HPAs (min 2) own the counts: each Deployment scaled from 1 to 2, every pod ready
    current = await wait_settled(cluster_a, dict.fromkeys(SERVICES, MIN_REPLICAS))
    assert set(current) == set(SERVICES)
    for service in SERVICES:
        pods = await pods_of(cluster_a, service)
        assert len(pods) == MIN_REPLICAS
        # Pod Security "restricted" admitted them; the required spread put one on each node
        assert {p.spec.node_name for p in pods} <= set(kwok_nodes)
        assert len({p.spec.node_name for p in pods}) == MIN_REPLICAS
        assert all(p.status.phase == "Running" for p in pods)
    policy_pod = (await pods_of(cluster_a, "policy"))[0]
    assert [c.name for c in policy_pod.spec.containers] == ["policy", "opa"]
    # the gateway objects landed where the values put them, in the CRDs' real schemas
    async with cluster_a.admin_client() as api:
        custom = k8s.CustomObjectsApi(api)
        reg = await custom.get_namespaced_custom_object(
            "mcp.kuadrant.io", "v1", REG_NS, "mcpserverregistrations", "kubernetes-mcp"
        )
        backend_policy = await custom.get_namespaced_custom_object(
            "kuadrant.io", "v1", REG_NS, "authpolicies", "kubernetes-mcp"
        )
        broker_policy = await custom.get_namespaced_custom_object(
            "kuadrant.io", "v1", BROKER_NS, "authpolicies", "mcp-broker-tool-list"
        )
        namespace = await k8s.CoreV1Api(api).read_namespace(REG_NS)
    assert reg["spec"]["prefix"] == "kube_"
    decide = backend_policy["spec"]["rules"]["metadata"]["policy"]["http"]["url"]
    assert decide == f"http://policy.{NS}.svc.cluster.local:8080/v1/decide"
    assert broker_policy["spec"]["targetRef"]["name"] == "mcp-route"
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"


async def test_a_wrong_value_fails_the_install_and_installs_nothing(
    installed: str, cluster_a: Cluster
) -> None:
    with pytest.raises(HelmError) as refused:
        await helm(
            cluster_a,
            "install",
            "kmg-wrong",
            str(chart.CHART),
            "--namespace",
            NS,
            *chart.value_args(set_json={"tokenExchange.replica": 3}),
        )
    assert "/tokenExchange" in refused.value.stderr
    assert "'replica' not allowed" in refused.value.stderr
    releases = json.loads(await helm(cluster_a, "list", "--namespace", NS, "--output", "json"))
    assert [r["name"] for r in releases] == [chart.RELEASE]


async def test_upgrade_from_the_previous_values(
    installed: str, cluster_a: Cluster, tmp_path: Path
) -> None:
    """``helm upgrade --reuse-values`` adding the shared token cache with its Redis and a deny
    list entry: token-exchange rolls to the Redis settings, Redis comes up, the policy pods are
    not restarted (the data ConfigMap changes in place and is reloaded), the backend is left
    alone, and no count the HPAs chose is reset."""
    before = await wait_settled(cluster_a, dict.fromkeys(SERVICES, MIN_REPLICAS))
    policy_pods = {p.metadata.name for p in await pods_of(cluster_a, "policy")}
    data = yaml.safe_load(chart.CHART.joinpath("values.yaml").read_text())["policy"]["data"]
    deny = data["deny_list.json"]
    upgrade = tmp_path / "upgrade.yaml"
    upgrade.write_text(
        yaml.safe_dump(
            {
                "tokenExchange": {"sharedCache": {"enabled": True}},
                "redis": {"enabled": True},
                "policy": {
                    "data": {
                        "deny_list.json": {"deny_list": [*deny["deny_list"], DENY_ENTRY]},
                    }
                },
            }
        )
    )
    out = await helm(
        cluster_a,
        "upgrade",
        chart.RELEASE,
        str(chart.CHART),
        "--namespace",
        NS,
        "--reuse-values",
        "--values",
        str(upgrade),
        "--wait",
        "--timeout",
        HELM_TIMEOUT,
    )
    assert "REVISION: 2" in out
    after = await deployments(cluster_a)
    # helm never set a count: the HPAs' 2 stay right after the upgrade, not a reset to 1
    assert {n: after[n].spec.replicas for n in SERVICES} == dict.fromkeys(SERVICES, MIN_REPLICAS)
    after = await wait_settled(cluster_a, {**dict.fromkeys(SERVICES, MIN_REPLICAS), "redis": 1})
    gen = {n: (before[n].metadata.generation, after[n].metadata.generation) for n in SERVICES}
    assert gen["token-exchange"][1] > gen["token-exchange"][0], "token-exchange rolled"
    assert gen["policy"][1] == gen["policy"][0], "policy data alone must not roll the pods"
    assert gen["mcp-backend"][1] == gen["mcp-backend"][0]
    assert {p.metadata.name for p in await pods_of(cluster_a, "policy")} == policy_pods
    main = after["token-exchange"].spec.template.spec.containers[0]
    env = {e.name: e.value for e in main.env or []}
    assert env["KMG_TOKEN_EXCHANGE_CACHE__BACKEND"] == "redis"
    assert (
        env["KMG_TOKEN_EXCHANGE_CACHE__REDIS__URL"]
        == f"redis://redis.{NS}.svc.cluster.local:6379/0"
    )
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        cm = await core.read_namespaced_config_map("policy-data", NS)
        netpols = await k8s.NetworkingV1Api(api).list_namespaced_network_policy(NS)
    assert DENY_ENTRY in json.loads(cm.data["deny_list.json"])["deny_list"]
    assert "redis-from-token-exchange" in {p.metadata.name for p in netpols.items}
    # the previous values were kept (Kuadrant, the test namespaces) and the new ones added
    values = json.loads(
        await helm(cluster_a, "get", "values", chart.RELEASE, "--namespace", NS, "--output", "json")
    )
    assert values["authMode"] == "kuadrant"
    assert values["registration"]["namespace"] == REG_NS
    assert values["redis"]["enabled"] is True
    history = json.loads(
        await helm(cluster_a, "history", chart.RELEASE, "--namespace", NS, "--output", "json")
    )
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]


async def test_istio_notes_print_the_overlays_mesh_config(
    cluster_a: Cluster, applier: KubeApplier
) -> None:
    """The provider the install notes print for istio-ext-authz is the overlay's mesh-config.yaml
    (``helm install --dry-run=server``: the notes of a real install, nothing applied; ``applier``
    installs the real CRDs the dry run needs)."""
    out = await helm(
        cluster_a,
        "install",
        "kmg-notes",
        str(chart.CHART),
        "--namespace",
        chart.NAMESPACE,
        "--dry-run=server",
        # nothing is applied; objects the shared cluster already holds in the example's
        # namespaces (the gateway controller tests apply the Kind overlay there) would otherwise
        # stop the dry run: helm refuses to adopt objects it did not create
        "--take-ownership",
        *chart.value_args([chart.EXAMPLES_DIR / "istio-ext-authz.yaml"]),
    )
    notes = out.split("\nNOTES:\n", 1)[1]
    printed = yaml.safe_load(notes.split("\n---\n", 1)[1])
    overlay = yaml.safe_load(
        (paths.REPO_ROOT / "manifests/overlays/istio-ext-authz/mesh-config.yaml").read_text()
    )
    assert printed == overlay
