"""Helm tools, driving the helm CLI with the caller's token in the environment."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from mcp_backend.access.policy import plural
from mcp_backend.errors import AccessDenied, ClusterError, InvalidArguments, ToolFailure
from mcp_backend.helm.chart_contents import chart_crd_files, manifest_kinds, manifest_objects
from mcp_backend.helm.post_render import REFUSAL_FILE, launcher
from mcp_backend.helm.runner import ChartSource, chart_source
from mcp_backend.kube.clusters import Api
from mcp_backend.rendering.output import ToolOutput, align
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
    source = chart_source(ctx.req("chart"), ctx.settings.helm_chart_sources)
    namespace = _namespace(ctx)
    name = ctx.text("name")
    if name is not None:
        checked(name, "release name", 53)
    values = ctx.obj("values")
    api = await ctx.api()
    files = {}
    if values:
        files["values.yaml"] = yaml.safe_dump(values)
    with ctx.helm.workdir() as home:
        # Fetch the chart once: the checks and the install read the very same archive.
        archive = await fetch_chart(ctx, api, source, home)
        args = ["install", *([name] if name else []), str(archive), "--namespace", namespace]
        args += ["-o", "json", *([] if name else ["--generate-name"])]
        if values:
            args += ["--values", "{home}/values.yaml"]
        # helm creates the crds/ files as they are, then the rendered templates and hooks.
        kinds: set[tuple[str, str]] = set()
        for path, text in chart_crd_files(archive):
            kinds |= manifest_kinds(text, f"the chart's {path}")
        # Render first: a server-side dry run, so lookup functions see the real cluster.
        rendered = await ctx.helm.run_json(api, [*args, "--dry-run=server"], files=files, home=home)
        kinds |= rendered_kinds(rendered)
        refused = "helm_install refused, nothing was installed: the chart creates"
        refuse_denied_kinds(ctx, kinds, refused)
        refuse_denied_objects(ctx, rendered, refused)
        release = await install_checked(ctx, api, args, kinds, files, home)
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


async def install_checked(
    ctx: ToolContext,
    api: Api,
    args: list[str],
    approved: set[tuple[str, str]],
    files: dict[str, str],
    home: Path,
    tool: str = "helm_install",
) -> dict[str, Any]:
    """``helm <args>`` with ``post_render`` as post-renderer: helm renders the chart again
    for the install (or upgrade), and anything but the ``approved`` kinds stops it before it
    changes a thing."""
    files = {
        **files,
        "post-render.py": launcher(),
        "approved-kinds.json": json.dumps(sorted(approved)),
    }
    args = [*args, "--post-renderer", sys.executable]
    for arg in ("-I", "{home}/post-render.py", "{home}/approved-kinds.json"):
        args += ["--post-renderer-args", arg]
    try:
        release = await ctx.helm.run_json(api, args, files=files, home=home)
    except ToolFailure:
        refused = home / REFUSAL_FILE
        if refused.exists():
            raise AccessDenied(
                f"{tool} refused, helm stopped before changing the release: "
                + refused.read_text(encoding="utf-8")
            ) from None
        raise
    return release if isinstance(release, dict) else {}


async def fetch_chart(ctx: ToolContext, api: Api, source: ChartSource, home: Path) -> Path:
    """The chart as one archive in the call's private directory: pulled once from a remote
    source, packaged (directory) or copied (archive) from an allowed local path."""
    dest = home / "chart"
    if not source.local:
        dest.mkdir()
        await ctx.helm.run(api, ["pull", source.ref, "--destination", str(dest)], home=home)
    elif _copy_local_archive(source.ref, dest) == "directory":
        await ctx.helm.run(api, ["package", source.ref, "--destination", str(dest)], home=home)
    return _single_archive(source.ref, dest)


def _copy_local_archive(ref: str, dest: Path) -> str:
    """Make ``dest``; copy a local chart archive into it ('archive'), or say 'directory'."""
    dest.mkdir()
    path = Path(ref)
    if path.is_dir():
        return "directory"
    if not path.is_file():
        raise InvalidArguments(f"chart {ref!r} does not exist on the server")
    shutil.copyfile(path, dest / "chart.tgz")
    return "archive"


def _single_archive(ref: str, dest: Path) -> Path:
    archives = [p for p in dest.iterdir() if p.is_file() and p.suffix != ".prov"]
    if len(archives) != 1:
        raise ToolFailure(f"fetching chart {ref!r} gave no single chart archive")
    return archives[0]


def rendered_kinds(release: Any) -> set[tuple[str, str]]:
    """(group, kind) of every object in a rendered release, hooks and List items included."""
    if not isinstance(release, dict):
        raise ToolFailure("helm printed no release to check the kinds of; nothing was changed")
    kinds = manifest_kinds(str(release.get("manifest") or ""))
    for hook in release.get("hooks") or []:
        if isinstance(hook, dict):
            where = f"the hook {hook.get('path') or hook.get('name') or ''}"
            kinds |= manifest_kinds(str(hook.get("manifest") or ""), where)
    return kinds


def refuse_denied_kinds(ctx: ToolContext, kinds: set[tuple[str, str]], what: str) -> None:
    """Raise :class:`AccessDenied` naming every denied kind among ``kinds``: an early refusal,
    before helm runs (helm's requests pass the cluster session's access control all the same)."""
    reasons = []
    for group, kind in sorted(kinds):
        reason = ctx.clusters.access.denial(group, plural(kind), kind)
        if reason is not None:
            reasons.append(f"{kind} ({group or 'core'}): {reason}")
    if reasons:
        raise AccessDenied(f"{what} {'; '.join(reasons)}")


def refuse_denied_objects(ctx: ToolContext, release: Any, what: str) -> None:
    """Raise :class:`AccessDenied` for an object of an allowed kind that the access policy
    refuses all the same (a service-account-token Secret), in the manifest or a hook."""
    manifests = [str(release.get("manifest") or "")]
    hooks = [h for h in release.get("hooks") or [] if isinstance(h, dict)]
    manifests += [str(h.get("manifest") or "") for h in hooks]
    for text in manifests:
        for obj in manifest_objects(text):
            group = str(obj.get("apiVersion") or "").rpartition("/")[0]
            meta = obj.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            ctx.clusters.access.check_object(
                group, plural(str(obj["kind"])), obj, f"{what} {obj['kind']} {name!r}"
            )


async def helm_list(ctx: ToolContext) -> ToolOutput:
    args = ["list", "-o", "json"]
    if ctx.flag("all_namespaces", default=False):
        args.append("--all-namespaces")
    else:
        args += ["--namespace", _namespace(ctx)]
    limit = ctx.integer("limit", minimum=1) or ctx.settings.default_list_limit
    limit = min(limit, ctx.settings.max_list_limit)
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
    # What uninstall deletes (the last release's manifest) and the delete hooks it runs.
    try:
        release = await ctx.helm.run_json(
            api, ["status", name, "--namespace", namespace, "-o", "json"]
        )
    except ClusterError:
        raise
    except ToolFailure as exc:
        if "not found" not in exc.message:
            raise
        raise ToolFailure(
            f"helm release {name!r} not found in namespace {namespace!r} on cluster "
            f"{api.name!r}; helm_list shows the releases"
        ) from None
    refuse_denied_kinds(
        ctx,
        rendered_kinds(release),
        f"helm_uninstall of {name!r} refused, nothing was removed: the release (its objects and "
        "delete hooks) holds",
    )
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
