"""Backend fixtures: the real backend (uvicorn, in-process, free port) in front of the testbed's
real clusters A and B, and a factory of real MCP clients (``mcp`` Streamable HTTP client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from mcp_backend.app import Backend, create_backend
from mcp_backend.config import DEFAULT_CHART_SOURCES, Settings
from tests.testbed import build
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port


class _Server(uvicorn.Server):
    """uvicorn without signal handlers (pytest owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningBackend:
    """A backend serving on 127.0.0.1:port."""

    backend: Backend
    server: _Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def cluster_entry(cluster: Cluster, *, default: bool = False) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "server": cluster.server,
        "ca_file": str(cluster.ca_file),
        "default": default,
    }


async def start_backend(settings: Settings) -> RunningBackend:
    backend = create_backend(settings)
    port = free_port()
    server = _Server(
        uvicorn.Config(
            backend.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("backend did not start within 10 s")
    return RunningBackend(backend, server, task, port)


async def stop_backend(running: RunningBackend) -> None:
    running.server.should_exit = True
    await asyncio.wait_for(running.task, 15)


BackendFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def charts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one local directory the test backends accept charts from (``helm_chart_sources``)."""
    return tmp_path_factory.mktemp("charts")


def chart_sources(charts_dir: Path, *extra: str) -> list[str]:
    """The default chart sources plus the tests' local chart directory (and ``extra``)."""
    return [*DEFAULT_CHART_SOURCES, str(charts_dir), *extra]


CHART_YAML = "apiVersion: v2\nname: tiny\nversion: 0.1.0\nappVersion: '1.0'\n"
TEMPLATE = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
    'data:\n  greeting: {{ .Values.greeting | default "hello" | quote }}\n'
)


@pytest.fixture
def tiny_chart(charts_dir: Path, tmp_path: Path) -> Path:
    """A local chart in the directory the test backends allow (``helm_chart_sources``)."""
    chart = charts_dir / tmp_path.name / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "templates" / "cm.yaml").write_text(TEMPLATE)
    return chart


@pytest.fixture(scope="session")
async def backend_factory(
    cluster_a: Cluster, cluster_b: Cluster, charts_dir: Path
) -> AsyncIterator[Callable[..., Any]]:
    """``await backend_factory(**settings_overrides)`` → a running backend for clusters A + B.

    Local charts are allowed from ``charts_dir`` only (configured explicitly: the default
    ``helm_chart_sources`` refuse local paths). Backends are cached per overrides for the
    session and all stopped at the end.
    """
    started: dict[str, RunningBackend] = {}
    helm = str(build.binary("helm"))

    async def factory(**overrides: Any) -> RunningBackend:
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in started:
            data: dict[str, Any] = {
                "clusters": [cluster_entry(cluster_a, default=True), cluster_entry(cluster_b)],
                "helm_binary": helm,
                "helm_chart_sources": chart_sources(charts_dir),
                **overrides,
            }
            started[key] = await start_backend(Settings.model_validate(data))
        return started[key]

    yield factory
    for running in started.values():
        await stop_backend(running)


@pytest.fixture(scope="session")
async def backend(backend_factory: Callable[..., Any]) -> RunningBackend:
    """The default backend: clusters A (default) and B, default settings."""
    running: RunningBackend = await backend_factory()
    return running


@contextlib.asynccontextmanager
async def mcp_client(
    url: str, token: str | None, *, mode: str = "legacy", headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """A real MCP client over Streamable HTTP sending ``token`` as bearer token."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with (
        httpx2.AsyncClient(headers=all_headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@pytest.fixture
def connect(
    backend: RunningBackend,
) -> Callable[..., contextlib.AbstractAsyncContextManager[Client]]:
    """``async with connect(token) as client`` → an MCP client of the default backend."""

    def factory(token: str | None, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Client]:
        return mcp_client(backend.url, token, **kwargs)

    return factory


def text_of(result: CallToolResult) -> str:
    """The concatenated text content of a tool result."""
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


# -- cluster content and tokens ------------------------------------------------------------------
NS = "mcpb"  # workloads of these tests on cluster A
NS_B = "mcpb-b"  # on cluster B
WEB_REPLICAS = 2


@dataclass(frozen=True)
class Tokens:
    """Real service-account tokens of cluster A (and one of B) with different RBAC."""

    admin: str  # cluster-admin on A
    viewer: str  # ClusterRole view on A (no secrets, no exec)
    ns_reader: str  # get/list pods and secrets in NS only
    nobody: str  # authenticated, no permissions
    admin_b: str  # cluster-admin on B


@pytest.fixture(scope="session")
async def tokens(cluster_a: Cluster, cluster_b: Cluster, service_account_token: Any) -> Tokens:
    reader_rules = [
        {"apiGroups": [""], "resources": ["pods", "pods/log", "secrets"], "verbs": ["get", "list"]}
    ]
    return Tokens(
        admin=await service_account_token(
            cluster_a, name="mcpb-admin", cluster_role="cluster-admin", cluster_wide=True
        ),
        viewer=await service_account_token(
            cluster_a, name="mcpb-viewer", cluster_role="view", cluster_wide=True
        ),
        ns_reader=await service_account_token(
            cluster_a, name="mcpb-reader", namespace=NS, rules=reader_rules
        ),
        nobody=await service_account_token(cluster_a, name="mcpb-nobody"),
        admin_b=await service_account_token(
            cluster_b, name="mcpb-admin", cluster_role="cluster-admin", cluster_wide=True
        ),
    )


def _web_deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


async def wait_for(
    check: Callable[[], Any], what: str, within: float = 60.0, interval: float = 0.25
) -> Any:
    """Poll ``await check()`` until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
async def workloads(
    cluster_a: Cluster, cluster_b: Cluster, kwok_nodes: list[str], tokens: Tokens
) -> dict[str, Any]:
    """Namespace NS on A with Deployment ``web`` (Running pods on kwok), a Secret and a
    ConfigMap; namespace NS_B on B with ConfigMap ``only-on-b``. Created with the admin client."""
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio.client.rest import ApiException

    async with cluster_a.admin_client() as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespace({"metadata": {"name": NS}})
        with contextlib.suppress(ApiException):
            await apps.create_namespaced_deployment(NS, _web_deployment("web", WEB_REPLICAS))
        with contextlib.suppress(ApiException):
            await core.create_namespaced_secret(
                NS,
                {
                    "metadata": {"name": "db-creds"},
                    "stringData": {"password": "hunter2-very-secret", "user": "app"},
                },
            )
        with contextlib.suppress(ApiException):
            await core.create_namespaced_config_map(
                NS,
                {
                    "metadata": {"name": "settings"},
                    "data": {"mode": "fast"},
                },
            )

        async def pods_running() -> list[str]:
            pods = await core.list_namespaced_pod(NS, label_selector="app=web")
            running = [p.metadata.name for p in pods.items if p.status.phase == "Running"]
            return running if len(running) >= WEB_REPLICAS else []

        web_pods = await wait_for(pods_running, "web pods Running on kwok nodes")
    async with cluster_b.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespace({"metadata": {"name": NS_B}})
        with contextlib.suppress(ApiException):
            await core.create_namespaced_config_map(
                NS_B,
                {
                    "metadata": {"name": "only-on-b"},
                    "data": {"cluster": "b"},
                },
            )
    return {"web_pods": sorted(web_pods)}


FiguresT = TypeVar("FiguresT")


async def same_figures(
    read_api: Callable[[], Awaitable[FiguresT]], call: Callable[[], Awaitable[CallToolResult]]
) -> tuple[FiguresT, CallToolResult]:
    """Call a tool between two reads of the metrics API that agree (figures change only when
    metrics-server scrapes, every 10 s), so the tool must have seen exactly those figures."""
    for _ in range(5):
        before = await read_api()
        result = await call()
        if await read_api() == before:
            return before, result
    raise AssertionError("the metrics API kept changing between reads")
