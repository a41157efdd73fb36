"""Charts for the helm tests, written on the fly, and what the cluster holds of a release."""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend.helm.runner import ChartSource
from mcp_backend.tools.base import ToolContext
from mcp_backend.tools.helm import fetch_chart, install_checked
from tests.mcp_backend.conftest import (
    CHART_YAML,
    NS,
    TEMPLATE,
)
from tests.testbed.cluster import Cluster

CRB = (
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
    "metadata: {name: NAME-crb}\n"
    "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n"
    "subjects: [{kind: ServiceAccount, name: nobody, namespace: mcpb}]\n"
)


SA = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: NAME-sa}\n"


def indent(doc: str, prefix: str) -> str:
    lines = doc.rstrip("\n").split("\n")
    return "\n".join([prefix + lines[0], *("  " + line for line in lines[1:])]) + "\n"


def write_chart(root: Path, files: dict[str, str], name: str = "tiny") -> Path:
    chart = root / name
    for rel, text in {
        "Chart.yaml": CHART_YAML.replace("tiny", name),
        "templates/cm.yaml": TEMPLATE,
        **files,
    }.items():
        (chart / rel).parent.mkdir(parents=True, exist_ok=True)
        (chart / rel).write_text(text)
    return chart


def chart_archive(name: str, files: dict[str, str]) -> bytes:
    """A chart archive (``name/Chart.yaml`` + ``files``) built in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, text in {"Chart.yaml": CHART_YAML.replace("tiny", name), **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def exists(cluster: Cluster, kind: str, name: str) -> bool:
    async with cluster.admin_client() as api:
        try:
            if kind == "ClusterRoleBinding":
                await k8s.RbacAuthorizationV1Api(api).read_cluster_role_binding(name)
            elif kind == "ServiceAccount":
                await k8s.CoreV1Api(api).read_namespaced_service_account(name, NS)
            elif kind == "Secret":
                await k8s.CoreV1Api(api).read_namespaced_secret(name, NS)
            else:
                await k8s.CoreV1Api(api).read_namespaced_config_map(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
    return True


async def release_records(cluster: Cluster, release: str) -> list[str]:
    """The Secrets in which helm stores the revisions of ``release`` in NS."""
    async with cluster.admin_client() as api:
        found = await k8s.CoreV1Api(api).list_namespaced_secret(
            NS, label_selector=f"owner=helm,name={release}"
        )
    return [s.metadata.name for s in found.items]


async def installed_releases(client: Any) -> list[str]:
    listed = await client.call_tool("helm_list", {"namespace": NS})
    return [r["name"] for r in (listed.structured_content or {}).get("releases", [])]


@contextlib.asynccontextmanager
async def install_of(
    backend: Any, token: str, chart: Path, release: str
) -> AsyncIterator[Callable[[set[tuple[str, str]]], Awaitable[dict[str, Any]]]]:
    """``install(approved)``: helm_install's last step (``install_checked``) for ``chart``, as
    if the earlier checks had approved exactly the kinds ``approved``."""
    handlers = backend.backend.handlers
    ctx = ToolContext(
        settings=handlers.settings,
        clusters=handlers.clusters,
        helm=handlers.helm,
        token=token,
        args={},
    )
    api = await ctx.api()
    with ctx.helm.workdir() as home:
        archive = await fetch_chart(ctx, api, ChartSource(str(chart), local=True), home)
        args = ["install", release, str(archive), "--namespace", NS, "-o", "json"]

        async def install(approved: set[tuple[str, str]]) -> dict[str, Any]:
            return await install_checked(ctx, api, args, approved, {}, home)

        yield install


TOKEN_SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: NAME-token\n"
    "  annotations: {kubernetes.io/service-account.name: mcpb-admin}\n"
    "type: kubernetes.io/service-account-token\n"
)
