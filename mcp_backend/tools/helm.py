"""Helm tools, driving the helm CLI with the caller's token in the environment."""

from __future__ import annotations

import re
from typing import Any

import yaml

from mcp_backend.errors import InvalidArguments
from mcp_backend.output import ToolOutput, align
from mcp_backend.tools.base import LIST_PROPS, Annotations, R, ToolContext, ToolSpec, prop
from mcp_backend.tools.pods import DEFAULT_NAMESPACE

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def checked(value: str, what: str, max_len: int) -> str:
    """A release name or namespace as helm and Kubernetes accept it (never a CLI flag)."""
    if len(value) > max_len or not _DNS_LABEL.fullmatch(value):
        raise InvalidArguments(
            f"{what} {value!r} is invalid: lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, at most {max_len} characters"
        )
    return value


def _namespace(ctx: ToolContext) -> str:
    return checked(ctx.text("namespace") or DEFAULT_NAMESPACE, "namespace", 63)


async def helm_install(ctx: ToolContext) -> ToolOutput:
    chart = ctx.req("chart")
    if chart.startswith("-") or any(c.isspace() for c in chart):
        raise InvalidArguments(f"chart {chart!r} is not a chart reference, path or URL")
    namespace = _namespace(ctx)
    name = ctx.text("name")
    if name is not None:
        checked(name, "release name", 53)
    api = await ctx.api()
    values = ctx.obj("values")
    args = ["install", *([name] if name else []), chart, "--namespace", namespace, "-o", "json"]
    if not name:
        args.append("--generate-name")
    files = {}
    if values:
        files["values.yaml"] = yaml.safe_dump(values)
        args += ["--values", "{home}/values.yaml"]
    # Render first (client-side dry run) so a chart cannot create a kind this server denies.
    rendered = await ctx.helm.run_json(api, [*args, "--dry-run"], files=files) or {}
    for group, kind in rendered_kinds(rendered):
        ctx.clusters.access.check_kind(group, kind)
    release = await ctx.helm.run_json(api, args, files=files) or {}
    info = release.get("info") or {}
    chart_meta = (release.get("chart") or {}).get("metadata") or {}
    summary = {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "revision": release.get("version"),
        "status": info.get("status"),
        "chart": f"{chart_meta.get('name')}-{chart_meta.get('version')}",
    }
    text = (
        f"Helm release {summary['name']!r} installed in namespace {summary['namespace']!r} "
        f"on cluster {api.name!r}: chart {summary['chart']}, revision {summary['revision']}, "
        f"status {summary['status']}.\n"
    )
    return ToolOutput(text=text, structured=summary)


def rendered_kinds(release: dict[str, Any]) -> set[tuple[str, str]]:
    """(group, kind) of every object in a rendered release, hooks included."""
    texts = [str(release.get("manifest") or "")]
    texts += [str(h.get("manifest") or "") for h in release.get("hooks") or []]
    kinds: set[tuple[str, str]] = set()
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind"):
                group = str(doc.get("apiVersion", "")).rpartition("/")[0]
                kinds.add((group, str(doc["kind"])))
    return kinds


async def helm_list(ctx: ToolContext) -> ToolOutput:
    args = ["list", "-o", "json"]
    if ctx.flag("all_namespaces", default=False):
        args.append("--all-namespaces")
    else:
        args += ["--namespace", _namespace(ctx)]
    limit = ctx.integer("limit", minimum=1) or ctx.settings.default_list_limit
    token = ctx.text("continue") or "0"
    if not token.isdigit():
        raise InvalidArguments("continue must be the token a previous helm_list returned")
    offset = int(token)
    args += ["--max", str(limit + 1), "--offset", str(offset)]  # one extra: is there more?
    api = await ctx.api()
    releases: list[dict[str, Any]] = await ctx.helm.run_json(api, args) or []
    more = len(releases) > limit
    releases = releases[:limit]
    if not releases:
        return ToolOutput(text="No Helm releases found.\n", structured={"releases": []})
    rows = [["NAME", "NAMESPACE", "REVISION", "STATUS", "CHART", "APP VERSION"]]
    for r in releases:
        rows.append(
            [
                str(r.get(k, ""))
                for k in ("name", "namespace", "revision", "status", "chart", "app_version")
            ]
        )
    structured: dict[str, Any] = {"releases": releases}
    text = align(rows)
    if more:
        structured["continue"] = str(offset + limit)
        text += (
            f'\n[{len(releases)} releases shown; more exist. Call again with continue="'
            f'{offset + limit}" (same other arguments) for the next page.]\n'
        )
    return ToolOutput(text=text, structured=structured)


async def helm_uninstall(ctx: ToolContext) -> ToolOutput:
    name = checked(ctx.req("name"), "release name", 53)
    namespace = _namespace(ctx)
    api = await ctx.api()
    out = await ctx.helm.run(api, ["uninstall", name, "--namespace", namespace])
    return ToolOutput(text=out.strip() + f" (cluster {api.name!r})\n")


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "helm_install",
            "Install a Helm chart in the current or provided namespace",
            {
                "chart": prop(
                    "string",
                    "Chart reference to install (for example: "
                    "stable/grafana, oci://ghcr.io/nginxinc/charts/nginx-ingress)",
                ),
                "values": prop("object", "Values to pass to the Helm chart (Optional)"),
                "name": prop(
                    "string", "Name of the Helm release (Optional, random name if not provided)"
                ),
                "namespace": prop(
                    "string",
                    "Namespace to install the Helm chart in (Optional, "
                    "current namespace if not provided)",
                ),
            },
            ("chart",),
            Annotations(False, False, False, True),
            helm_install,
            title="Helm: Install",
        ),
        ToolSpec(
            "helm_list",
            "List all the Helm releases in the current or provided namespace (or in all "
            "namespaces if specified)",
            {
                "namespace": prop(
                    "string",
                    "Namespace to list Helm releases from (Optional, all "
                    "namespaces if not provided)",
                ),
                "all_namespaces": prop(
                    "boolean",
                    "If true, lists all Helm releases in all "
                    "namespaces ignoring the namespace argument (Optional)",
                ),
                "limit": LIST_PROPS["limit"],
                "continue": LIST_PROPS["continue"],
            },
            (),
            R,
            helm_list,
            title="Helm: List",
        ),
        ToolSpec(
            "helm_uninstall",
            "Uninstall a Helm release in the current or provided namespace",
            {
                "name": prop("string", "Name of the Helm release to uninstall"),
                "namespace": prop(
                    "string",
                    "Namespace to uninstall the Helm release from "
                    "(Optional, current namespace if not provided)",
                ),
            },
            ("name",),
            Annotations(False, True, True, True),
            helm_uninstall,
            title="Helm: Uninstall",
        ),
    ]
