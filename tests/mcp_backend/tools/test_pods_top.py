"""``pods_top`` against the real cluster A and the testbed's real metrics-server (kwok pods report
the usage their annotations set): the figures match the Metrics API, shown like ``kubectl top``."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from mcp_types import CallToolResult

from mcp_backend.rendering.quantities import cpu_text, memory_text
from tests.mcp_backend.conftest import (
    NS,
    Tokens,
    mcp_client,
    same_figures,
    text_of,
    wait_for,
)
from tests.testbed.cluster import (
    USAGE_CPU_ANNOTATION,
    USAGE_MEMORY_ANNOTATION,
    Cluster,
)
from tests.testbed.fixtures_kube import ServiceAccountTokenFactory
from tests.testbed.metrics_server import MetricsServer, nanocores

# -- pods_top against the real metrics-server ----------------------------------------------------
TOP_NS = "mcpb-top"


TOP_LABEL = "kmg-top"


# pod -> (label value, containers, kwok usage per container: cpu, memory)
TOP_PODS = {
    "top-web": ("web", ("main", "side"), ("250m", "64Mi")),
    "top-db": ("db", ("main",), ("100m", "32Mi")),
}


Usage = list[tuple[str, str, str, str, str]]  # namespace, pod, container, cpu, memory


# Session scope: created before the (session) metrics_server fixture starts when this module runs
# first, so their metrics are ready with the nodes' instead of two scrapes (~20 s) later.
@pytest.fixture(scope="session")
async def top_pods(cluster_a: Cluster, kwok_nodes: list[str]) -> list[str]:
    """Pods in TOP_NS whose kwok containers use the CPU/memory of TOP_PODS, Running."""
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=TOP_NS)))
        for name, (label, containers, (cpu, memory)) in TOP_PODS.items():
            pod = k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(
                    name=name,
                    labels={TOP_LABEL: label},
                    annotations={USAGE_CPU_ANNOTATION: cpu, USAGE_MEMORY_ANNOTATION: memory},
                ),
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(name=c, image="registry.k8s.io/pause:3.10")
                        for c in containers
                    ]
                ),
            )
            with contextlib.suppress(ApiException):
                await core.create_namespaced_pod(TOP_NS, pod)

        async def running() -> bool:
            pods = await core.list_namespaced_pod(TOP_NS)
            return sum(p.status.phase == "Running" for p in pods.items) == len(TOP_PODS)

        await wait_for(running, "the top pods Running on kwok nodes")
    return sorted(TOP_PODS)


@pytest.fixture(scope="session")
async def pod_metrics(
    top_pods: list[str], metrics_server: MetricsServer, admin_client: k8s.ApiClient
) -> None:
    """metrics-server reports every container of the top pods (two scrapes after they run)."""

    async def reported() -> bool:
        usage = await _api_pod_usage(admin_client, TOP_NS)
        return {(pod, c) for _, pod, c, _, _ in usage} == {
            (pod, c) for pod, (_, containers, _) in TOP_PODS.items() for c in containers
        }

    await wait_for(reported, "pod metrics of the top pods", within=90, interval=1)


async def _api_pod_usage(
    api: k8s.ApiClient, namespace: str | None, name: str | None = None, selector: str = ""
) -> Usage:
    """What the metrics API itself says (admin client), flattened like pods_top's rows."""
    metrics = k8s.CustomObjectsApi(api)
    group, version = "metrics.k8s.io", "v1beta1"
    if name is not None:
        assert namespace is not None
        items = [
            await metrics.get_namespaced_custom_object(group, version, namespace, "pods", name)
        ]
    elif namespace is not None:
        body = await metrics.list_namespaced_custom_object(
            group, version, namespace, "pods", label_selector=selector
        )
        items = body["items"]
    else:
        body = await metrics.list_cluster_custom_object(
            group, version, "pods", label_selector=selector
        )
        items = body["items"]
    return sorted(
        (
            item["metadata"]["namespace"],
            item["metadata"]["name"],
            c["name"],
            c["usage"]["cpu"],
            c["usage"]["memory"],
        )
        for item in items
        for c in item["containers"]
    )


def _tool_usage(result: CallToolResult) -> Usage:
    assert not result.is_error, text_of(result)
    return sorted(
        (r["namespace"], r["pod"], r["container"], r["cpu"], r["memory"])
        for r in result.structured_content["items"]
    )


def _kubectl_cpu(quantity: str) -> str:
    """kubectl top shows CPU in millicores, rounded up."""
    return f"{-(-nanocores(quantity) // 1_000_000)}m"


def _kubectl_memory(quantity: str) -> str:
    """kwok's working set is reported as 'NNMi' (or bytes/'Ki'); kubectl top shows MiB."""
    for suffix, factor in (("Mi", 2**20), ("Ki", 2**10), ("", 1)):
        if quantity.endswith(suffix) and quantity[: len(quantity) - len(suffix)].isdigit():
            return f"{int(quantity[: len(quantity) - len(suffix)]) * factor // 2**20}Mi"
    raise AssertionError(f"unexpected memory quantity {quantity!r}")


def _assert_rows_shown(result: CallToolResult, usage: Usage) -> None:
    """Each container's row in the text table carries kubectl-top figures of the API's usage."""
    lines = text_of(result).splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    rows = {tuple(line.split()) for line in lines[1:]}
    expected = {
        (ns, pod, c, _kubectl_cpu(cpu), _kubectl_memory(mem)) for ns, pod, c, cpu, mem in usage
    }
    assert rows == expected


def _assert_kwok_usage(usage: Usage) -> None:
    """The figures are the kwok annotations' usage: metrics-server really scraped kwok."""
    for _, pod, _, cpu, memory in usage:
        want_cpu, want_memory = TOP_PODS[pod][2]
        assert memory == want_memory
        millicores = nanocores(cpu) / 1_000_000
        assert abs(millicores - int(want_cpu[:-1])) < 2, (pod, cpu)  # a rate of a counter


async def test_pods_top_in_namespace_matches_metrics_api(
    connect: Any, tokens: Tokens, admin_client: k8s.ApiClient, pod_metrics: None
) -> None:
    async with connect(tokens.admin) as client:
        usage, result = await same_figures(
            lambda: _api_pod_usage(admin_client, TOP_NS),
            lambda: client.call_tool("pods_top", {"namespace": TOP_NS}),
        )
    assert _tool_usage(result) == usage
    assert {pod for _, pod, _, _, _ in usage} == set(TOP_PODS)
    assert len(usage) == 3  # top-web: main + side, top-db: main
    _assert_kwok_usage(usage)
    _assert_rows_shown(result, usage)


async def test_pods_top_all_namespaces_matches_metrics_api(
    connect: Any,
    tokens: Tokens,
    admin_client: k8s.ApiClient,
    pod_metrics: None,
    workloads: dict[str, Any],
) -> None:
    async def web_pods_reported() -> bool:
        return {pod for _, pod, *_ in await _api_pod_usage(admin_client, NS)} >= set(
            workloads["web_pods"]
        )

    await wait_for(web_pods_reported, "pod metrics of the web Deployment", within=60, interval=1)
    async with connect(tokens.admin) as client:
        usage, result = await same_figures(
            lambda: _api_pod_usage(admin_client, None),
            lambda: client.call_tool("pods_top", {}),
        )
    assert _tool_usage(result) == usage
    namespaces = {ns for ns, *_ in usage}
    assert TOP_NS in namespaces
    assert {TOP_NS, NS} <= namespaces  # the web Deployment's pods are listed too
    _assert_rows_shown(result, usage)


async def test_pods_top_named_pod(
    connect: Any, tokens: Tokens, admin_client: k8s.ApiClient, pod_metrics: None
) -> None:
    async with connect(tokens.admin) as client:
        usage, result = await same_figures(
            lambda: _api_pod_usage(admin_client, TOP_NS, "top-web"),
            lambda: client.call_tool("pods_top", {"namespace": TOP_NS, "name": "top-web"}),
        )
        missing = await client.call_tool("pods_top", {"namespace": TOP_NS, "name": "no-such"})
    assert _tool_usage(result) == usage
    assert [(pod, c) for _, pod, c, _, _ in usage] == [("top-web", "main"), ("top-web", "side")]
    _assert_kwok_usage(usage)
    _assert_rows_shown(result, usage)
    assert missing.is_error
    assert "not found" in text_of(missing)
    assert "no-such" in text_of(missing)


async def test_pods_top_label_selector(
    connect: Any, tokens: Tokens, admin_client: k8s.ApiClient, pod_metrics: None
) -> None:
    selector = f"{TOP_LABEL}=db"
    async with connect(tokens.admin) as client:
        usage, in_ns = await same_figures(
            lambda: _api_pod_usage(admin_client, TOP_NS, selector=selector),
            lambda: client.call_tool("pods_top", {"namespace": TOP_NS, "label_selector": selector}),
        )
        _, everywhere = await same_figures(
            lambda: _api_pod_usage(admin_client, None, selector=selector),
            lambda: client.call_tool("pods_top", {"label_selector": selector}),
        )
        nothing = await client.call_tool(
            "pods_top", {"namespace": TOP_NS, "label_selector": f"{TOP_LABEL}=none"}
        )
    assert [(ns, pod, c) for ns, pod, c, _, _ in usage] == [(TOP_NS, "top-db", "main")]
    assert _tool_usage(in_ns) == usage
    assert _tool_usage(everywhere) == usage
    _assert_kwok_usage(usage)
    assert not nothing.is_error
    assert text_of(nothing) == "No pod metrics found.\n"
    assert nothing.structured_content == {"items": []}


async def test_pods_top_follows_the_callers_rbac(
    connect: Any,
    cluster_a: Cluster,
    tokens: Tokens,
    service_account_token: ServiceAccountTokenFactory,
    admin_client: k8s.ApiClient,
    pod_metrics: None,
) -> None:
    """The metrics API sits behind the caller's own RBAC: ``view`` does not grant it, a Role on
    ``pods.metrics.k8s.io`` in one namespace grants exactly that namespace."""
    reader = await service_account_token(
        cluster_a,
        name="mcpb-top-reader",
        namespace=TOP_NS,
        rules=[{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list"]}],
    )
    async with connect(tokens.viewer) as client:
        refused = await client.call_tool("pods_top", {"namespace": TOP_NS})
    async with connect(reader) as client:
        usage, allowed = await same_figures(
            lambda: _api_pod_usage(admin_client, TOP_NS),
            lambda: client.call_tool("pods_top", {"namespace": TOP_NS}),
        )
        elsewhere = await client.call_tool("pods_top", {"namespace": NS})
    assert refused.is_error
    text = text_of(refused)
    assert "403" in text
    assert "mcpb-viewer" in text
    assert "list pods.metrics.k8s.io" in text
    assert _tool_usage(allowed) == usage
    assert elsewhere.is_error
    assert "mcpb-top-reader" in text_of(elsewhere)
    assert f"namespace '{NS}'" in text_of(elsewhere)


async def test_pods_top_sees_a_metrics_api_registered_after_discovery(
    backend_factory: Any,
    tokens: Tokens,
    metrics_server: MetricsServer,
    admin_client: k8s.ApiClient,
    pod_metrics: None,
) -> None:
    """A backend whose cached discovery (TTL 1 h) predates the metrics API still finds it at the
    first pods_top after it is registered; while it is absent, cluster A says so too."""
    running = await backend_factory(discovery_ttl_s=3600)
    metrics_group = k8s.ApisApi(admin_client)

    async def group_served(expected: bool) -> bool:
        groups = await metrics_group.get_api_versions()
        return any(g.name == "metrics.k8s.io" for g in groups.groups) == expected

    metrics_server.unregister()
    try:
        await wait_for(lambda: group_served(False), "metrics.k8s.io gone from discovery")
        async with mcp_client(running.url, tokens.admin) as client:
            absent = await client.call_tool("pods_top", {"namespace": TOP_NS})
    finally:
        metrics_server.register()
    await wait_for(lambda: group_served(True), "metrics.k8s.io back in discovery")

    async def api_answers() -> bool:
        try:
            return bool(await _api_pod_usage(admin_client, TOP_NS))
        except ApiException:
            return False  # 503 until the aggregator has checked the new APIService

    await wait_for(api_answers, "the metrics API answering again", within=30)
    async with mcp_client(running.url, tokens.admin) as client:
        usage, present = await same_figures(
            lambda: _api_pod_usage(admin_client, TOP_NS),
            lambda: client.call_tool("pods_top", {"namespace": TOP_NS}),
        )
    assert absent.is_error
    assert "metrics API (metrics.k8s.io) not available on cluster 'cluster-a'" in text_of(absent)
    assert _tool_usage(present) == usage


@pytest.mark.parametrize(
    ("cpu", "memory", "shown"),
    [
        ("249991265n", "67108864", ("250m", "64Mi")),  # kubectl top: millicores rounded up
        ("250009196n", "64Mi", ("251m", "64Mi")),
        ("1", "1Gi", ("1000m", "1024Mi")),
        ("1500u", "1536Ki", ("2m", "1Mi")),  # MiB rounded down
        ("2e-1", "1.5e6", ("200m", "1Mi")),
        ("n", "12 Mi", ("n", "12 Mi")),  # not a quantity: shown as the API gave it
        ("1e999999999", "NaN", ("1e999999999", "NaN")),
    ],
)
def test_top_figures_are_shown_like_kubectl_top(
    cpu: str, memory: str, shown: tuple[str, str]
) -> None:
    assert (cpu_text(cpu), memory_text(memory)) == shown
