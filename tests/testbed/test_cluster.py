"""The testbed's Kubernetes clusters are real: a Deployment gets Running pods on kwok nodes, RBAC
is enforced on service-account tokens, two clusters share nothing, and pod logs and exec go through
the API server to kwok. Everything below talks to the real kube-apiserver via kubernetes_asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.stream import WsApiClient

from tests.testbed.cluster import FAKE_LOG_LINES, Cluster
from tests.testbed.fixtures_kube import ServiceAccountTokenFactory

POD_READY_TIMEOUT = 60.0
POD_READER_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


async def _namespace(api: k8s.ApiClient, name: str) -> str:
    try:
        await k8s.CoreV1Api(api).create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    return name


def _pod(name: str) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app": name}),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="main", image="registry.k8s.io/pause:3.10")]
        ),
    )


async def _running_pod(api: k8s.ApiClient, namespace: str, name: str) -> k8s.V1Pod:
    core = k8s.CoreV1Api(api)
    await core.create_namespaced_pod(namespace, _pod(name))
    deadline = time.monotonic() + POD_READY_TIMEOUT
    while True:
        pod = await core.read_namespaced_pod(name, namespace)
        if pod.status.phase == "Running":
            return pod
        assert time.monotonic() < deadline, f"pod {namespace}/{name} not Running: {pod.status}"
        await asyncio.sleep(0.2)


async def test_deployment_gets_ready_pods_on_kwok_nodes(
    admin_client: k8s.ApiClient, kwok_nodes: list[str]
) -> None:
    ns = await _namespace(admin_client, "tb-deploy")
    apps, core = k8s.AppsV1Api(admin_client), k8s.CoreV1Api(admin_client)
    await apps.create_namespaced_deployment(
        ns,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="web"),
            spec=k8s.V1DeploymentSpec(
                replicas=3,
                selector=k8s.V1LabelSelector(match_labels={"app": "web"}),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels={"app": "web"}),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="web", image="nginx")]),
                ),
            ),
        ),
    )
    deadline = time.monotonic() + POD_READY_TIMEOUT
    while True:
        dep = await apps.read_namespaced_deployment("web", ns)
        if dep.status.ready_replicas == 3 and dep.status.available_replicas == 3:
            break
        assert time.monotonic() < deadline, f"deployment not ready: {dep.status}"
        await asyncio.sleep(0.2)

    (rs,) = (await apps.list_namespaced_replica_set(ns, label_selector="app=web")).items
    assert rs.metadata.owner_references[0].kind == "Deployment"
    pods = (await core.list_namespaced_pod(ns, label_selector="app=web")).items
    assert len(pods) == 3
    for pod in pods:
        assert pod.metadata.owner_references[0].name == rs.metadata.name
        assert pod.spec.node_name in kwok_nodes  # placed by the real scheduler
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip  # assigned by kwok from its pod CIDR
        assert pod.spec.service_account_name == "default"
        ready = {c.type: c.status for c in pod.status.conditions}
        assert ready["Ready"] == "True"


async def test_read_only_token_lists_pods_but_cannot_delete(
    cluster_a: Cluster,
    admin_client: k8s.ApiClient,
    service_account_token: ServiceAccountTokenFactory,
    kwok_nodes: list[str],
) -> None:
    ns = await _namespace(admin_client, "tb-rbac")
    await _running_pod(admin_client, ns, "victim")
    token = await service_account_token(
        cluster_a, name="pod-reader", namespace=ns, rules=POD_READER_RULES
    )
    me = await cluster_a.whoami(token)
    assert me.username == f"system:serviceaccount:{ns}:pod-reader"

    async with cluster_a.client_for_token(token) as api:
        core = k8s.CoreV1Api(api)
        names = [p.metadata.name for p in (await core.list_namespaced_pod(ns)).items]
        assert names == ["victim"]
        with pytest.raises(ApiException) as deleted:
            await core.delete_namespaced_pod("victim", ns)
        assert deleted.value.status == 403
        with pytest.raises(ApiException) as elsewhere:  # the Role is namespaced
            await core.list_namespaced_pod("default")
        assert elsewhere.value.status == 403
        with pytest.raises(ApiException) as secrets:
            await core.list_namespaced_secret(ns)
        assert secrets.value.status == 403
    still_there = await k8s.CoreV1Api(admin_client).read_namespaced_pod("victim", ns)
    assert still_there.metadata.deletion_timestamp is None


async def test_cluster_b_is_independent_of_a(
    cluster_a: Cluster, cluster_b: Cluster, service_account_token: ServiceAccountTokenFactory
) -> None:
    assert cluster_a.server != cluster_b.server
    ns = "tb-indep"
    async with cluster_a.admin_client() as api_a, cluster_b.admin_client() as api_b:
        await _namespace(api_a, ns)
        await k8s.CoreV1Api(api_a).create_namespaced_config_map(
            ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="only-in-a"), data={"k": "v"})
        )
        assert (await k8s.CoreV1Api(api_a).read_namespaced_config_map("only-in-a", ns)).data == {
            "k": "v"
        }
        with pytest.raises(ApiException) as missing:
            await k8s.CoreV1Api(api_b).read_namespaced_config_map("only-in-a", ns)
        assert missing.value.status == 404
        namespaces_b = [
            n.metadata.name for n in (await k8s.CoreV1Api(api_b).list_namespace()).items
        ]
        assert "default" in namespaces_b
        assert ns not in namespaces_b

    token_a = await service_account_token(
        cluster_a, name="viewer", namespace=ns, cluster_role="view"
    )
    token_b = await service_account_token(
        cluster_b, name="viewer", namespace=ns, cluster_role="view"
    )
    assert (await cluster_a.whoami(token_a)).username == f"system:serviceaccount:{ns}:viewer"
    assert (await cluster_b.whoami(token_b)).username == f"system:serviceaccount:{ns}:viewer"
    for cluster, foreign in ((cluster_b, token_a), (cluster_a, token_b)):
        with pytest.raises(ApiException) as rejected:
            await cluster.whoami(foreign)
        assert rejected.value.status == 401, f"{cluster.name} accepted a foreign token"

    # A's admin client certificate is signed by A's own client CA: B does not know it.
    wrong = cluster_b.configuration()
    wrong.cert_file, wrong.key_file = str(cluster_a.admin_cert.cert), str(cluster_a.admin_cert.key)
    async with k8s.ApiClient(wrong) as api:
        with pytest.raises(ApiException) as unknown_cert:
            await k8s.CoreV1Api(api).list_namespace()
        assert unknown_cert.value.status == 401


async def test_pod_logs_through_api_server(
    admin_client: k8s.ApiClient, kwok_nodes: list[str]
) -> None:
    ns = await _namespace(admin_client, "tb-logs")
    await _running_pod(admin_client, ns, "talker")
    core = k8s.CoreV1Api(admin_client)
    text = await core.read_namespaced_pod_log("talker", ns, container="main")
    assert text == "".join(f"{line}\n" for line in FAKE_LOG_LINES)
    last = await core.read_namespaced_pod_log("talker", ns, tail_lines=1)
    assert last == f"{FAKE_LOG_LINES[-1]}\n"
    with pytest.raises(ApiException) as unknown:
        await core.read_namespaced_pod_log("talker", ns, container="nope")
    assert unknown.value.status == 400


async def test_pod_exec_through_api_server(
    cluster_a: Cluster, admin_client: k8s.ApiClient, kwok_nodes: list[str]
) -> None:
    ns = await _namespace(admin_client, "tb-exec")
    await _running_pod(admin_client, ns, "shell")
    async with WsApiClient(cluster_a.configuration()) as ws:
        output = await k8s.CoreV1Api(ws).connect_get_namespaced_pod_exec(
            "shell",
            ns,
            container="main",
            # WsApiClient sends a list as repeated `command` parameters (the stub says str)
            command=["sh", "-c", "echo exec-ok; pwd; echo kwok=$KWOK_EXEC"],  # type: ignore[arg-type]
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
        )
    assert output.splitlines() == ["exec-ok", str(cluster_a.exec_dir), "kwok=1"]


async def test_admin_kubeconfig_file_is_usable(cluster_a: Cluster) -> None:
    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(cluster_a.admin_kubeconfig), client_configuration=cfg
    )
    assert cfg.host == cluster_a.server
    async with k8s.ApiClient(cfg) as api:
        review = await k8s.AuthenticationV1Api(api).create_self_subject_review(
            k8s.V1SelfSubjectReview()
        )
    assert review.status.user_info.username == "admin"
    assert "system:masters" in review.status.user_info.groups
