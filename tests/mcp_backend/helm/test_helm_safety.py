"""Helm tools cannot create or delete a denied kind, whatever the chart does (List documents,
``crds/`` files, lookups, a server serving different content twice, hooks), and take charts only
from the configured sources. Real helm CLI, real API server, real MCP client."""

from __future__ import annotations

import contextlib
import io
import ssl
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from yarl import URL

from mcp_backend.config import DEFAULT_CHART_SOURCES
from mcp_backend.errors import AccessDenied, InvalidArguments, ToolFailure
from mcp_backend.helm.api_guard import ApiGuard
from mcp_backend.helm.chart_contents import manifest_kinds
from mcp_backend.helm.post_render import refusal
from mcp_backend.helm.runner import ChartSource, chart_source
from mcp_backend.tools.base import ToolContext
from mcp_backend.tools.helm import fetch_chart, install_checked
from tests.mcp_backend.conftest import (
    CHART_YAML,
    NS,
    TEMPLATE,
    Tokens,
    chart_sources,
    mcp_client,
    text_of,
)
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

CRB = (
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
    "metadata: {name: NAME-crb}\n"
    "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n"
    "subjects: [{kind: ServiceAccount, name: nobody, namespace: mcpb}]\n"
)
SA = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: NAME-sa}\n"


def _indent(doc: str, prefix: str) -> str:
    lines = doc.rstrip("\n").split("\n")
    return "\n".join([prefix + lines[0], *("  " + line for line in lines[1:])]) + "\n"


def _chart(root: Path, files: dict[str, str], name: str = "tiny") -> Path:
    chart = root / name
    for rel, text in {
        "Chart.yaml": CHART_YAML.replace("tiny", name),
        "templates/cm.yaml": TEMPLATE,
        **files,
    }.items():
        (chart / rel).parent.mkdir(parents=True, exist_ok=True)
        (chart / rel).write_text(text)
    return chart


def _archive(name: str, files: dict[str, str]) -> bytes:
    """A chart archive (``name/Chart.yaml`` + ``files``) built in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, text in {"Chart.yaml": CHART_YAML.replace("tiny", name), **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _exists(cluster: Cluster, kind: str, name: str) -> bool:
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


async def _release_records(cluster: Cluster, release: str) -> list[str]:
    """The Secrets in which helm stores the revisions of ``release`` in NS."""
    async with cluster.admin_client() as api:
        found = await k8s.CoreV1Api(api).list_namespaced_secret(
            NS, label_selector=f"owner=helm,name={release}"
        )
    return [s.metadata.name for s in found.items]


async def _releases(client: Any) -> list[str]:
    listed = await client.call_tool("helm_list", {"namespace": NS})
    return [r["name"] for r in (listed.structured_content or {}).get("releases", [])]


# case -> (template, the denied kind it holds)
LIST_DOCUMENTS = {
    "List": ("apiVersion: v1\nkind: List\nitems:\n" + _indent(CRB, "- "), "ClusterRoleBinding"),
    "ServiceAccountList": (
        "apiVersion: v1\nkind: ServiceAccountList\nitems:\n" + _indent(SA, "- "),
        "ServiceAccount",
    ),
    "List as a hook": (
        "apiVersion: v1\nkind: List\n"
        'metadata: {annotations: {"helm.sh/hook": post-install}}\nitems:\n' + _indent(CRB, "- "),
        "ClusterRoleBinding",
    ),
}


@pytest.mark.parametrize("case", sorted(LIST_DOCUMENTS))
async def test_helm_install_refuses_denied_kinds_inside_list_documents(
    connect: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    case: str,
) -> None:
    release = f"hl{sorted(LIST_DOCUMENTS).index(case)}"
    template, denied = LIST_DOCUMENTS[case]
    template = template.replace("NAME", "{{ .Release.Name }}")
    chart = _chart(charts_dir / tmp_path.name, {"templates/list.yaml": template})
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": release, "namespace": NS}
        )
        releases = await _releases(client)
    assert result.is_error, text_of(result)
    # Named by the kinds check (Kind) or by the API guard (resource, e.g. clusterrolebindings).
    assert denied.lower() in text_of(result).lower()
    assert "denied by this server's policy" in text_of(result)
    assert release not in releases
    suffix = "sa" if denied == "ServiceAccount" else "crb"
    assert not await _exists(cluster_a, denied, f"{release}-{suffix}")
    assert not await _exists(cluster_a, "ConfigMap", f"{release}-cm")


def _crds_in_subchart_archive(root: Path) -> Path:
    sub = _archive("sub", {"crds/sa.yaml": SA.replace("NAME", "hc2")})
    chart = _chart(root, {})
    (chart / "charts").mkdir()
    (chart / "charts" / "sub-0.1.0.tgz").write_bytes(sub)
    return chart


CRDS_CASES = {
    "crds/ of the chart": lambda root: _chart(root, {"crds/crb.yaml": CRB.replace("NAME", "hc0")}),
    "crds/ of a subchart directory": lambda root: _chart(
        root,
        {"charts/sub/Chart.yaml": CHART_YAML, "charts/sub/crds/sa.yaml": SA.replace("NAME", "hc1")},
    ),
    "crds/ of a subchart archive": _crds_in_subchart_archive,
}


@pytest.mark.parametrize("case", list(CRDS_CASES))
async def test_helm_install_checks_the_kinds_of_crds_files(
    connect: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    case: str,
) -> None:
    index = list(CRDS_CASES).index(case)
    chart = CRDS_CASES[case](charts_dir / tmp_path.name)
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": f"hc{index}", "namespace": NS}
        )
        releases = await _releases(client)
    assert result.is_error, text_of(result)
    assert "denied by this server's policy" in text_of(result)
    assert f"hc{index}" not in releases
    if index == 0:
        assert "ClusterRoleBinding" in text_of(result)
        assert not await _exists(cluster_a, "ClusterRoleBinding", "hc0-crb")
    else:
        assert "ServiceAccount" in text_of(result)
        assert not await _exists(cluster_a, "ServiceAccount", f"hc{index}-sa")


async def test_helm_install_renders_lookups_against_the_real_cluster(
    connect: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    # A client-side render sees an empty cluster (lookup returns nothing) and a ConfigMap; the
    # real install would see the namespace and create a ServiceAccount.
    template = (
        f'{{{{- if lookup "v1" "Namespace" "" "{NS}" }}}}\n'
        + SA.replace("NAME", "{{ .Release.Name }}")
        + "{{- else }}\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-x}\n"
        "{{- end }}\n"
    )
    chart = _chart(charts_dir / tmp_path.name, {"templates/sa.yaml": template})
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": "hlookup", "namespace": NS}
        )
        releases = await _releases(client)
    assert result.is_error, text_of(result)
    assert "ServiceAccount" in text_of(result)
    assert "hlookup" not in releases
    assert not await _exists(cluster_a, "ServiceAccount", "hlookup-sa")


@contextlib.asynccontextmanager
async def _install_of(
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


async def test_the_installs_own_render_is_checked_before_helm_creates_anything(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    """helm renders the chart again for the install; ``helm_post_render`` (helm's
    post-renderer) refuses any kind the dry run did not approve. Played deterministically: only
    ConfigMap counts as approved here, as if the dry run had rendered the chart without the
    Secret (a ``rand``/``now`` template)."""
    release, added = "hrender", "Secret"
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: NAME-s}\nstringData: {a: b}\n"
    chart = _chart(
        charts_dir / tmp_path.name,
        {"templates/secret.yaml": secret.replace("NAME", "{{ .Release.Name }}")},
    )
    async with _install_of(backend, tokens.admin, chart, release) as install:
        with pytest.raises(AccessDenied) as refused:
            await install({("", "ConfigMap")})
        assert not await _exists(cluster_a, "ConfigMap", f"{release}-cm")
        assert await _release_records(cluster_a, release) == []
        # The same install with the kind approved goes through: the renderer hands helm its
        # manifests back unchanged.
        installed = await install({("", "ConfigMap"), ("", added)})
    assert f"{added} (core)" in refused.value.message
    assert "rendered differently for the install" in refused.value.message
    assert installed["name"] == release
    assert await _release_records(cluster_a, release) == [f"sh.helm.release.v1.{release}.v1"]
    assert await _exists(cluster_a, "ConfigMap", f"{release}-cm")
    assert await _exists(cluster_a, added, f"{release}-s")
    async with mcp_client(backend.url, tokens.admin) as client:
        removed = await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
    assert not removed.is_error, text_of(removed)


GUARDED = {
    "a template": SA,
    "a hook": SA.replace(
        "metadata: {name: NAME-sa}",
        'metadata: {name: NAME-sa, annotations: {"helm.sh/hook": pre-install}}',
    ),
}


@pytest.mark.parametrize("case", sorted(GUARDED))
async def test_the_api_guard_stops_helm_on_a_denied_kind_whatever_was_checked(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    case: str,
) -> None:
    """The last line of defence: helm reaches the cluster only through the backend's API guard,
    which refuses every request on a denied kind. Played with every earlier check passed (the
    ServiceAccount counted as approved, as a ``rand`` hook could make the dry run believe):
    the guard still stops helm, and the cluster never sees the ServiceAccount."""
    release = f"hg{sorted(GUARDED).index(case)}"
    chart = _chart(
        charts_dir / tmp_path.name,
        {"templates/sa.yaml": GUARDED[case].replace("NAME", "{{ .Release.Name }}")},
    )
    try:
        async with _install_of(backend, tokens.admin, chart, release) as install:
            with pytest.raises(AccessDenied) as refused:
                await install({("", "ConfigMap"), ("", "ServiceAccount")})
        message = refused.value.message
        assert "helm install on cluster 'cluster-a' was stopped" in message
        assert "serviceaccounts" in message
        assert "denied by this server's policy" in message
        assert not await _exists(cluster_a, "ServiceAccount", f"{release}-sa")
    finally:  # helm may have recorded a failed release: remove its records and objects
        async with cluster_a.admin_client() as admin:
            core = k8s.CoreV1Api(admin)
            for record in await _release_records(cluster_a, release):
                await core.delete_namespaced_secret(record, NS)
            if await _exists(cluster_a, "ConfigMap", f"{release}-cm"):
                await core.delete_namespaced_config_map(f"{release}-cm", NS)


async def test_helm_install_fetches_a_remote_chart_once(
    backend_factory: Any, charts_dir: Path, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    benign = _archive("remote", {"templates/cm.yaml": TEMPLATE})
    hostile = _archive(
        "remote",
        {"templates/cm.yaml": TEMPLATE, "templates/sa.yaml": SA.replace("NAME", "hremote")},
    )
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        # A server that answers the first download with a harmless chart, later ones with a
        # chart creating a denied kind: a check-then-fetch-again install would be fooled.
        hits.append(request.path)
        return web.Response(body=benign if len(hits) == 1 else hostile)

    app = web.Application()
    app.router.add_get("/remote-0.1.0.tgz", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        base = f"http://127.0.0.1:{port}/"
        running = await backend_factory(helm_chart_sources=chart_sources(charts_dir, base))
        async with mcp_client(running.url, tokens.admin) as client:
            result = await client.call_tool(
                "helm_install",
                {"chart": base + "remote-0.1.0.tgz", "name": "hremote", "namespace": NS},
            )
            assert not result.is_error, text_of(result)
            assert await _exists(cluster_a, "ConfigMap", "hremote-cm")
            assert not await _exists(cluster_a, "ServiceAccount", "hremote-sa")
            removed = await client.call_tool("helm_uninstall", {"name": "hremote", "namespace": NS})
            assert not removed.is_error, text_of(removed)
    finally:
        await runner.cleanup()
    assert hits == ["/remote-0.1.0.tgz"]


@pytest.mark.parametrize("where", ["manifest", "pre-delete hook"])
async def test_helm_uninstall_refuses_a_release_holding_a_denied_kind(
    backend_factory: Any,
    connect: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    where: str,
) -> None:
    release = "hu-manifest" if where == "manifest" else "hu-hook"
    sa = SA.replace("NAME", "{{ .Release.Name }}")
    if where != "manifest":  # not created by install: uninstall would create it
        hook = '{"helm.sh/hook": pre-delete, "helm.sh/hook-delete-policy": hook-succeeded}'
        sa = sa.replace("metadata: {", f"metadata: {{annotations: {hook}, ")
    chart = _chart(charts_dir / tmp_path.name, {"templates/sa.yaml": sa})
    # Installed through a backend that denies nothing (as another tool or person could have).
    permissive = await backend_factory(denied_kinds=[])
    async with mcp_client(permissive.url, tokens.admin) as admin:
        installed = await admin.call_tool(
            "helm_install", {"chart": str(chart), "name": release, "namespace": NS}
        )
        assert not installed.is_error, text_of(installed)
        assert await _exists(cluster_a, "ServiceAccount", f"{release}-sa") == (where == "manifest")
        async with connect(tokens.admin) as client:
            refused = await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
            still = await _releases(client)
        assert await _exists(cluster_a, "ConfigMap", f"{release}-cm")
        cleanup = await admin.call_tool("helm_uninstall", {"name": release, "namespace": NS})
    assert refused.is_error, text_of(refused)
    assert "ServiceAccount" in text_of(refused)
    assert "denied by this server's policy" in text_of(refused)
    assert "nothing was removed" in text_of(refused)
    assert release in still
    assert not cleanup.is_error, text_of(cleanup)


async def test_helm_install_accepts_only_configured_chart_sources(
    backend_factory: Any, connect: Any, tokens: Tokens, tiny_chart: Path, charts_dir: Path
) -> None:
    escape = tiny_chart.parent / "escape"  # inside the allowed directory, pointing out of it
    escape.symlink_to("/etc", target_is_directory=True)
    refused = [
        "/etc",
        "file:///etc/passwd",
        f"{charts_dir}/../../etc",
        str(escape / "ssl"),
        "tiny",
        "./tiny",
        "http://127.0.0.1:1/tiny-0.1.0.tgz",
        "ftp://127.0.0.1/tiny-0.1.0.tgz",
    ]
    async with connect(tokens.admin) as client:
        for chart in refused:
            result = await client.call_tool(
                "helm_install", {"chart": chart, "name": "hsrc", "namespace": NS}
            )
            assert result.is_error, chart
            assert "helm_chart_sources" in text_of(result), (chart, text_of(result))
    defaults = await backend_factory(helm_chart_sources=list(DEFAULT_CHART_SOURCES))
    async with mcp_client(defaults.url, tokens.admin) as client:
        local = await client.call_tool(
            "helm_install", {"chart": str(tiny_chart), "name": "hsrc", "namespace": NS}
        )
    assert local.is_error
    assert "local path" in text_of(local)
    assert "helm_chart_sources" in text_of(local)


def test_chart_source_classification(tmp_path: Path) -> None:
    allowed = [*DEFAULT_CHART_SOURCES, str(tmp_path), "http://charts.internal/"]
    assert chart_source("oci://ghcr.io/x/nginx", allowed).local is False
    assert chart_source("https://example.com/a.tgz", allowed).local is False
    assert chart_source("stable/grafana", allowed).ref == "stable/grafana"
    assert chart_source("http://charts.internal/a.tgz", allowed).local is False
    inside = chart_source(f"file://{tmp_path}/c", allowed)
    assert inside.local
    assert inside.ref == str((tmp_path / "c").resolve())
    for chart in ("http://charts.internal.evil/a.tgz", "HTTPS://x/a.tgz", "../x", "c"):
        with pytest.raises(AccessDenied, match="helm_chart_sources"):
            chart_source(chart, allowed)
    for chart in ("", "-x", "a b", "a\x00b", "a\nb"):
        with pytest.raises(InvalidArguments, match="not a chart reference"):
            chart_source(chart, allowed)


def test_manifest_kinds_walks_items_at_any_depth_and_fails_closed() -> None:
    nested = (
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n"
        + _indent(_indent(CRB, "- "), "  ")
        + "---\nanchored: &a [*a]\n---\n"
        + "apiVersion: apps/v1\nkind: Deployment\n"
    )
    assert manifest_kinds(nested) == {
        ("", "List"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("apps", "Deployment"),
    }
    with pytest.raises(ToolFailure, match="cannot check the kinds"):
        manifest_kinds("kind: [unclosed\n")


def test_post_render_refusal_names_unapproved_kinds_and_fails_closed() -> None:
    approved = {("", "ConfigMap")}
    assert refusal(approved, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n") is None
    reason = refusal(approved, CRB.replace("NAME", "x") + "---\n" + SA.replace("NAME", "x"))
    assert reason is not None
    assert "ServiceAccount (core), ClusterRoleBinding (rbac.authorization.k8s.io)," in reason
    unparsable = refusal(approved, "kind: [unclosed\n")
    assert unparsable is not None
    assert "cannot check the kinds the chart as rendered for the install creates" in unparsable


async def test_api_guard_forwards_allowed_calls_and_refuses_the_rest(
    backend: Any, tokens: Tokens, workloads: Any
) -> None:
    """The guard on its own, with a real client: an allowed call reaches the cluster (the
    caller's token decides: without one the API server refuses system:anonymous), a denied kind
    gets the guard's 403 Status, and paths the check could read differently from the API server
    are refused."""
    api = await backend.backend.clusters.bind(None, tokens.admin)
    client = api.cluster.client
    async with ApiGuard(client.session()) as guard:
        tls = ssl.create_default_context(cafile=str(guard.ca_file))
        auth = {"Authorization": f"Bearer {tokens.admin}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:

            async def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
                url = URL(guard.url + path, encoded=True)  # sent as written, not normalized
                async with http.get(url, headers=headers) as resp:
                    return resp.status, await resp.json(content_type=None)

            allowed = await get(f"/api/v1/namespaces/{NS}/configmaps", auth)
            anonymous = await get(f"/api/v1/namespaces/{NS}/configmaps", {})
            denied = await get("/apis/rbac.authorization.k8s.io/v1/clusterroles", auth)
            dotted = await get(f"/api/v1/namespaces/{NS}/pods/../../serviceaccounts", auth)
            encoded = await get("/apis/rbac.authorization.k8s.io/v1/cluster%72oles", auth)
    assert allowed[0] == 200
    assert allowed[1]["kind"] == "ConfigMapList"
    assert anonymous[0] == 403  # the API server's own answer to no token
    assert "system:anonymous" in anonymous[1]["message"]
    assert denied[0] == 403
    assert denied[1]["reason"] == "Forbidden"
    assert "refused by the MCP backend" in denied[1]["message"]
    assert "denied by this server's policy" in denied[1]["message"]
    assert guard.refused == [denied[1]["message"].split(": ", 1)[1]]
    assert dotted[0] == encoded[0] == 400


TOKEN_SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: NAME-token\n"
    "  annotations: {kubernetes.io/service-account.name: mcpb-admin}\n"
    "type: kubernetes.io/service-account-token\n"
)


async def test_helm_install_refuses_a_service_account_token_secret(
    connect: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    """The side door through helm: Secret is an allowed kind, but this Secret would make the
    cluster write a token of ServiceAccount ``mcpb-admin`` (cluster-admin) into it."""
    chart = _chart(
        charts_dir / tmp_path.name,
        {"templates/token.yaml": TOKEN_SECRET.replace("NAME", "{{ .Release.Name }}")},
    )
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": "htoken", "namespace": NS}
        )
        releases = await _releases(client)
    text = text_of(result)
    assert result.is_error, text
    assert text.startswith("helm_install refused, nothing was installed: the chart creates")
    assert "a Secret of type kubernetes.io/service-account-token" in text
    assert "htoken" not in releases
    assert not await _exists(cluster_a, "Secret", "htoken-token")
    assert not await _exists(cluster_a, "ConfigMap", "htoken-cm")


@pytest.mark.parametrize("hook", [False, True])
async def test_the_api_guard_stops_a_service_account_token_secret_whatever_was_checked(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
    hook: bool,
) -> None:
    """With every earlier check passed (Secret approved, as a ``rand`` template could make the
    dry run render an Opaque Secret), the guard still refuses the request creating it."""
    release = f"hgt{int(hook)}"
    template = TOKEN_SECRET.replace("NAME", "{{ .Release.Name }}")
    if hook:
        template = template.replace(
            "  annotations: {", '  annotations: {"helm.sh/hook": pre-install, '
        )
    chart = _chart(charts_dir / tmp_path.name, {"templates/token.yaml": template})
    try:
        async with _install_of(backend, tokens.admin, chart, release) as install:
            with pytest.raises(AccessDenied) as refused:
                await install({("", "ConfigMap"), ("", "Secret")})
        message = refused.value.message
        assert "helm install on cluster 'cluster-a' was stopped" in message
        assert "a Secret of type kubernetes.io/service-account-token" in message
        assert not await _exists(cluster_a, "Secret", f"{release}-token")
    finally:
        async with cluster_a.admin_client() as admin:
            core = k8s.CoreV1Api(admin)
            for record in await _release_records(cluster_a, release):
                await core.delete_namespaced_secret(record, NS)
            if await _exists(cluster_a, "ConfigMap", f"{release}-cm"):
                await core.delete_namespaced_config_map(f"{release}-cm", NS)


async def test_api_guard_refuses_a_service_account_token_secret_and_forwards_other_secrets(
    backend: Any, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    api = await backend.backend.clusters.bind(None, tokens.admin)
    client = api.cluster.client
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "guard-token",
            "annotations": {"kubernetes.io/service-account.name": "mcpb-admin"},
        },
        "type": "kubernetes.io/service-account-token",
    }
    opaque = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "guard-opaque"}}
    try:
        async with ApiGuard(client.session()) as guard:
            tls = ssl.create_default_context(cafile=str(guard.ca_file))
            auth = {"Authorization": f"Bearer {tokens.admin}"}
            url = f"{guard.url}/api/v1/namespaces/{NS}/secrets"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
                async with http.post(url, json=secret, headers=auth) as resp:
                    refused = resp.status, await resp.json(content_type=None)
                async with http.post(url, json=opaque, headers=auth) as resp:
                    forwarded = resp.status
        assert refused[0] == 403
        assert "refused by the MCP backend" in refused[1]["message"]
        assert "makes the cluster issue a token of a ServiceAccount" in refused[1]["message"]
        assert forwarded == 201
        assert not await _exists(cluster_a, "Secret", "guard-token")
        assert await _exists(cluster_a, "Secret", "guard-opaque")
    finally:
        async with cluster_a.admin_client() as admin:
            with contextlib.suppress(ApiException):
                await k8s.CoreV1Api(admin).delete_namespaced_secret("guard-opaque", NS)
