"""Helm tools cannot create or delete a denied kind, whatever the chart does (List documents,
``crds/`` files, lookups, a server serving different content twice, hooks), and take charts only
from the configured sources. Real helm CLI, real API server, real MCP client. The install's own
render is checked in ``test_post_render.py``, the API guard on the wire in ``test_api_guard.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mcp_backend.config import DEFAULT_CHART_SOURCES
from mcp_backend.errors import AccessDenied, InvalidArguments, ToolFailure
from mcp_backend.helm.chart_contents import manifest_kinds
from mcp_backend.helm.runner import chart_source
from tests.mcp_backend.conftest import (
    CHART_YAML,
    NS,
    TEMPLATE,
    Tokens,
    chart_sources,
    mcp_client,
    text_of,
)
from tests.mcp_backend.helm.releases import (
    CRB,
    SA,
    TOKEN_SECRET,
    chart_archive,
    exists,
    indent,
    installed_releases,
    write_chart,
)
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

# case -> (template, the denied kind it holds)
LIST_DOCUMENTS = {
    "List": ("apiVersion: v1\nkind: List\nitems:\n" + indent(CRB, "- "), "ClusterRoleBinding"),
    "ServiceAccountList": (
        "apiVersion: v1\nkind: ServiceAccountList\nitems:\n" + indent(SA, "- "),
        "ServiceAccount",
    ),
    "List as a hook": (
        "apiVersion: v1\nkind: List\n"
        'metadata: {annotations: {"helm.sh/hook": post-install}}\nitems:\n' + indent(CRB, "- "),
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
    chart = write_chart(charts_dir / tmp_path.name, {"templates/list.yaml": template})
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": release, "namespace": NS}
        )
        releases = await installed_releases(client)
    assert result.is_error, text_of(result)
    # Named by the kinds check (Kind) or by the API guard (resource, e.g. clusterrolebindings).
    assert denied.lower() in text_of(result).lower()
    assert "denied by this server's policy" in text_of(result)
    assert release not in releases
    suffix = "sa" if denied == "ServiceAccount" else "crb"
    assert not await exists(cluster_a, denied, f"{release}-{suffix}")
    assert not await exists(cluster_a, "ConfigMap", f"{release}-cm")


def _crds_in_subchart_archive(root: Path) -> Path:
    sub = chart_archive("sub", {"crds/sa.yaml": SA.replace("NAME", "hc2")})
    chart = write_chart(root, {})
    (chart / "charts").mkdir()
    (chart / "charts" / "sub-0.1.0.tgz").write_bytes(sub)
    return chart


CRDS_CASES = {
    "crds/ of the chart": lambda root: write_chart(
        root, {"crds/crb.yaml": CRB.replace("NAME", "hc0")}
    ),
    "crds/ of a subchart directory": lambda root: write_chart(
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
        releases = await installed_releases(client)
    assert result.is_error, text_of(result)
    assert "denied by this server's policy" in text_of(result)
    assert f"hc{index}" not in releases
    if index == 0:
        assert "ClusterRoleBinding" in text_of(result)
        assert not await exists(cluster_a, "ClusterRoleBinding", "hc0-crb")
    else:
        assert "ServiceAccount" in text_of(result)
        assert not await exists(cluster_a, "ServiceAccount", f"hc{index}-sa")


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
    chart = write_chart(charts_dir / tmp_path.name, {"templates/sa.yaml": template})
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": "hlookup", "namespace": NS}
        )
        releases = await installed_releases(client)
    assert result.is_error, text_of(result)
    assert "ServiceAccount" in text_of(result)
    assert "hlookup" not in releases
    assert not await exists(cluster_a, "ServiceAccount", "hlookup-sa")


async def test_helm_install_fetches_a_remote_chart_once(
    backend_factory: Any, charts_dir: Path, tokens: Tokens, cluster_a: Cluster, workloads: Any
) -> None:
    benign = chart_archive("remote", {"templates/cm.yaml": TEMPLATE})
    hostile = chart_archive(
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
            assert await exists(cluster_a, "ConfigMap", "hremote-cm")
            assert not await exists(cluster_a, "ServiceAccount", "hremote-sa")
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
    chart = write_chart(charts_dir / tmp_path.name, {"templates/sa.yaml": sa})
    # Installed through a backend that denies nothing (as another tool or person could have).
    permissive = await backend_factory(denied_kinds=[])
    async with mcp_client(permissive.url, tokens.admin) as admin:
        installed = await admin.call_tool(
            "helm_install", {"chart": str(chart), "name": release, "namespace": NS}
        )
        assert not installed.is_error, text_of(installed)
        assert await exists(cluster_a, "ServiceAccount", f"{release}-sa") == (where == "manifest")
        async with connect(tokens.admin) as client:
            refused = await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
            still = await installed_releases(client)
        assert await exists(cluster_a, "ConfigMap", f"{release}-cm")
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
        + indent(indent(CRB, "- "), "  ")
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
    chart = write_chart(
        charts_dir / tmp_path.name,
        {"templates/token.yaml": TOKEN_SECRET.replace("NAME", "{{ .Release.Name }}")},
    )
    async with connect(tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": "htoken", "namespace": NS}
        )
        releases = await installed_releases(client)
    text = text_of(result)
    assert result.is_error, text
    assert text.startswith("helm_install refused, nothing was installed: the chart creates")
    assert "a Secret of type kubernetes.io/service-account-token" in text
    assert "htoken" not in releases
    assert not await exists(cluster_a, "Secret", "htoken-token")
    assert not await exists(cluster_a, "ConfigMap", "htoken-cm")
