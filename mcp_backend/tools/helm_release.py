"""Day-2 Helm tools on an existing release: status, history, upgrade, rollback.

Same safety as ``helm_install`` (see ``tools/helm.py`` and the README's Helm section): charts only
from the configured sources, fetched once; every helm command reaches the cluster through its
own API guard (denied kinds refused on the wire), with the caller's token. Before anything
changes, the kinds involved are checked against the denied kinds:

* ``helm_upgrade``: the current release's objects and hooks (the upgrade patches or deletes
  them) and the new chart's server-side dry-run render; the upgrade itself runs with the
  post-renderer that stops a render holding any kind the dry run did not approve;
* ``helm_rollback``: the current release (patched or deleted) and the target revision's
  manifest and hooks (re-created, its rollback hooks run).

Status and history show the release's records, never its values or manifest contents (both
may hold secrets): the objects of a release are listed by kind and name.
"""

from __future__ import annotations

from typing import Any

import yaml

from mcp_backend.errors import ClusterError, InvalidArguments, ToolFailure
from mcp_backend.helm.runner import chart_source
from mcp_backend.kube.clusters import Api
from mcp_backend.rendering.output import ToolOutput, align, truncate
from mcp_backend.tools.base import Annotations, R, ToolContext, ToolSpec, prop
from mcp_backend.tools.helm import (
    checked,
    fetch_chart,
    install_checked,
    refuse_denied_kinds,
    rendered_kinds,
)
from mcp_backend.tools.pods import DEFAULT_NAMESPACE

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
HISTORY_DEFAULT = 20


def _release_args(ctx: ToolContext) -> tuple[str, str]:
    name = checked(ctx.req("name"), "release name", 53)
    namespace = checked(ctx.text("namespace") or DEFAULT_NAMESPACE, "namespace", 63)
    return name, namespace


async def read_release(
    ctx: ToolContext, api: Api, name: str, namespace: str, revision: int | None = None
) -> dict[str, Any]:
    """``helm status -o json`` of the release (one revision of it when given)."""
    args = ["status", name, "--namespace", namespace, "-o", "json"]
    if revision is not None:
        args += ["--revision", str(revision)]
    try:
        release = await ctx.helm.run_json(api, args)
    except ClusterError:
        raise
    except ToolFailure as exc:
        if "not found" not in exc.message:
            raise
        what = f"revision {revision} of helm release" if revision is not None else "helm release"
        raise ToolFailure(
            f"{what} {name!r} not found in namespace {namespace!r} on cluster {api.name!r}; "
            "helm_list shows the releases, helm_history their revisions"
        ) from None
    if not isinstance(release, dict):
        raise ToolFailure(f"helm status of {name!r} printed no release")
    return release


def release_objects(release: dict[str, Any]) -> list[dict[str, str]]:
    """Kind, name and namespace of every object of a release's manifest (no contents)."""
    try:
        docs = list(yaml.load_all(str(release.get("manifest") or ""), Loader=_Loader))
    except yaml.YAMLError:
        return []
    objects = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind"):
            raw_meta = doc.get("metadata")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            objects.append(
                {
                    "apiVersion": str(doc.get("apiVersion") or ""),
                    "kind": str(doc["kind"]),
                    "name": str(meta.get("name") or ""),
                    **({"namespace": str(meta["namespace"])} if meta.get("namespace") else {}),
                }
            )
    return objects


async def read_chart(
    ctx: ToolContext, api: Api, name: str, namespace: str, revision: int | None = None
) -> dict[str, Any]:
    """The chart of a release revision (``helm get metadata``: ``helm status`` leaves it out)."""
    args = ["get", "metadata", name, "--namespace", namespace, "-o", "json"]
    if revision is not None:
        args += ["--revision", str(revision)]
    meta = await ctx.helm.run_json(api, args)
    return meta if isinstance(meta, dict) else {}


def _summary(release: dict[str, Any], chart: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a release revision is: its records and (from ``chart`` or the release) its chart."""
    info = release.get("info") or {}
    if chart is None:
        metadata = (release.get("chart") or {}).get("metadata") or {}
        chart = {"chart": metadata.get("name"), "version": metadata.get("version")}
        chart["appVersion"] = metadata.get("appVersion")
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "revision": release.get("version"),
        "status": info.get("status"),
        "chart": f"{chart.get('chart')}-{chart.get('version')}",
        "appVersion": chart.get("appVersion"),
        "firstDeployed": info.get("first_deployed"),
        "lastDeployed": info.get("last_deployed"),
        "description": info.get("description"),
    }


async def helm_status(ctx: ToolContext) -> ToolOutput:
    name, namespace = _release_args(ctx)
    revision = ctx.integer("revision", minimum=1)
    api = await ctx.api()
    release = await read_release(ctx, api, name, namespace, revision)
    summary = _summary(release, await read_chart(ctx, api, name, namespace, revision))
    objects = release_objects(release)
    lines = [
        f"NAME: {summary['name']}",
        f"NAMESPACE: {summary['namespace']} (cluster {api.name!r})",
        f"REVISION: {summary['revision']}",
        f"STATUS: {summary['status']}",
        f"CHART: {summary['chart']} (app version {summary['appVersion']})",
        f"LAST DEPLOYED: {summary['lastDeployed']}",
        f"DESCRIPTION: {summary['description']}",
    ]
    text = "\n".join(lines) + "\n"
    if objects:
        rows = [["KIND", "NAME", "NAMESPACE"]]
        rows += [[o["kind"], o["name"], o.get("namespace", "")] for o in objects]
        text += "\nOBJECTS:\n" + align(rows)
    notes = str((release.get("info") or {}).get("notes") or "").strip()
    if notes:
        text += "\nNOTES:\n" + notes + "\n"
    text, _ = truncate(text, ctx.settings.output_max_chars, "resources_get shows one object")
    return ToolOutput(text=text, structured={**summary, "cluster": api.name, "objects": objects})


async def helm_history(ctx: ToolContext) -> ToolOutput:
    name, namespace = _release_args(ctx)
    limit = ctx.integer("max", default=HISTORY_DEFAULT, minimum=1) or HISTORY_DEFAULT
    api = await ctx.api()
    args = ["history", name, "--namespace", namespace, "-o", "json", "--max", str(limit)]
    try:
        entries = await ctx.helm.run_json(api, args) or []
    except ClusterError:
        raise
    except ToolFailure as exc:
        if "not found" not in exc.message:
            raise
        raise ToolFailure(
            f"helm release {name!r} not found in namespace {namespace!r} on cluster "
            f"{api.name!r}; helm_list shows the releases"
        ) from None
    keys = ("revision", "updated", "status", "chart", "app_version", "description")
    rows = [["REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION", "DESCRIPTION"]]
    rows += [[str(e.get(k, "")) for k in keys] for e in entries if isinstance(e, dict)]
    text = f"helm release {name!r} in namespace {namespace!r} on cluster {api.name!r}:\n"
    text += align(rows)
    text, _ = truncate(text, ctx.settings.output_max_chars, "Ask for fewer revisions with max")
    return ToolOutput(
        text=text, structured={"name": name, "namespace": namespace, "revisions": entries}
    )


def _refuse_current(ctx: ToolContext, tool: str, name: str, release: dict[str, Any]) -> None:
    refuse_denied_kinds(
        ctx,
        rendered_kinds(release),
        f"{tool} of {name!r} refused, nothing was changed: the current release (which it "
        "would change or delete) holds",
    )


async def helm_upgrade(ctx: ToolContext) -> ToolOutput:
    name, namespace = _release_args(ctx)
    source = chart_source(ctx.req("chart"), ctx.settings.helm_chart_sources)
    values = ctx.obj("values")
    reuse = ctx.flag("reuse_values", default=False)
    api = await ctx.api()
    current = await read_release(ctx, api, name, namespace)
    _refuse_current(ctx, "helm_upgrade", name, current)
    files = {"values.yaml": yaml.safe_dump(values)} if values else {}
    with ctx.helm.workdir() as home:
        archive = await fetch_chart(ctx, api, source, home)
        args = ["upgrade", name, str(archive), "--namespace", namespace, "-o", "json"]
        if values:
            args += ["--values", "{home}/values.yaml"]
        if reuse:
            args.append("--reuse-values")
        rendered = await ctx.helm.run_json(api, [*args, "--dry-run=server"], files=files, home=home)
        kinds = rendered_kinds(rendered)
        refuse_denied_kinds(
            ctx, kinds, "helm_upgrade refused, nothing was changed: the chart creates"
        )
        release = await install_checked(ctx, api, args, kinds, files, home, tool="helm_upgrade")
    summary = _summary(release)
    text = (
        f"Helm release {name!r} in namespace {namespace!r} on cluster {api.name!r} upgraded: "
        f"chart {summary['chart']}, revision {summary['revision']} (was "
        f"{current.get('version')}), status {summary['status']}.\n"
    )
    return ToolOutput(text=text, structured={**summary, "previousRevision": current.get("version")})


async def helm_rollback(ctx: ToolContext) -> ToolOutput:
    name, namespace = _release_args(ctx)
    wanted = ctx.integer("revision", minimum=0)
    api = await ctx.api()
    current = await read_release(ctx, api, name, namespace)
    version = int(current.get("version") or 0)
    target_revision = wanted or version - 1
    if target_revision < 1:
        raise InvalidArguments(
            f"helm release {name!r} has only revision {version}: there is no previous revision "
            "to roll back to"
        )
    target = await read_release(ctx, api, name, namespace, target_revision)
    _refuse_current(ctx, "helm_rollback", name, current)
    refuse_denied_kinds(
        ctx,
        rendered_kinds(target),
        f"helm_rollback of {name!r} refused, nothing was changed: revision {target_revision} "
        "(its objects and rollback hooks) holds",
    )
    await ctx.helm.run(api, ["rollback", name, str(target_revision), "--namespace", namespace])
    after = _summary(
        await read_release(ctx, api, name, namespace), await read_chart(ctx, api, name, namespace)
    )
    text = (
        f"Helm release {name!r} in namespace {namespace!r} on cluster {api.name!r} rolled back "
        f"to revision {target_revision}: now revision {after['revision']} ({after['chart']}), "
        f"status {after['status']}.\n"
    )
    return ToolOutput(text=text, structured={**after, "rolledBackTo": target_revision})


_NAME = prop("string", "Name of the Helm release")
_NS = prop("string", "Namespace of the Helm release (Optional, current namespace if not provided)")


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "helm_status",
            "Show the status of a Helm release: revision, state, chart, notes and the objects "
            "it holds (by kind and name; values and manifests are not shown)",
            {
                "name": _NAME,
                "namespace": _NS,
                "revision": prop(
                    "integer", "Revision to show (Optional, the current one by default)", minimum=1
                ),
            },
            ("name",),
            R,
            helm_status,
            title="Helm: Status",
        ),
        ToolSpec(
            "helm_history",
            "List the revisions of a Helm release (newest last): when, status, chart, description",
            {
                "name": _NAME,
                "namespace": _NS,
                "max": prop(
                    "integer",
                    f"Maximum number of revisions to list (Optional, default: {HISTORY_DEFAULT})",
                    minimum=1,
                ),
            },
            ("name",),
            R,
            helm_history,
            title="Helm: History",
        ),
        ToolSpec(
            "helm_upgrade",
            "Upgrade a Helm release to a chart (a new version, or the same chart with other "
            "values); the release must exist (helm_install creates one)",
            {
                "name": _NAME,
                "chart": prop(
                    "string",
                    "Chart reference to upgrade to (for example: stable/grafana, "
                    "oci://ghcr.io/nginxinc/charts/nginx-ingress)",
                ),
                "values": prop(
                    "object",
                    "Values for the chart (Optional; when omitted the release keeps its "
                    "current values)",
                ),
                "reuse_values": prop(
                    "boolean",
                    "Merge the given values over the release's current values instead of the "
                    "chart's defaults (Optional, default: false)",
                ),
                "namespace": _NS,
            },
            ("name", "chart"),
            Annotations(False, True, False, True),
            helm_upgrade,
            title="Helm: Upgrade",
        ),
        ToolSpec(
            "helm_rollback",
            "Roll a Helm release back to an earlier revision (helm_history lists them)",
            {
                "name": _NAME,
                "revision": prop(
                    "integer",
                    "Revision to roll back to (Optional, default: the previous revision)",
                    minimum=0,
                ),
                "namespace": _NS,
            },
            ("name",),
            Annotations(False, True, False, True),
            helm_rollback,
            title="Helm: Rollback",
        ),
    ]
