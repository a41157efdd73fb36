"""Pod tools: list, get, delete, top, exec, log, run."""

from __future__ import annotations

import secrets
from typing import Any

from mcp_backend.errors import NotFound, ToolFailure
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import POD, SERVICE, segment
from mcp_backend.kube.pod_exec import ExecResult
from mcp_backend.operations.objects import get_object, object_yaml, read_log
from mcp_backend.rendering.output import ToolOutput, align, to_yaml
from mcp_backend.rendering.quantities import cpu_text, memory_text
from mcp_backend.tools.base import (
    LIST_PROPS,
    R_IDEMPOTENT,
    Annotations,
    R,
    ToolContext,
    ToolSpec,
    list_tool,
    prop,
)
from mcp_backend.tools.log_filters import (
    LOG_FILTER_PROPS,
    grep_pod_log,
    line_filter,
    log_query,
    window_text,
)

DEFAULT_NAMESPACE = "default"
METRICS_GROUP = "metrics.k8s.io"


async def pods_list(ctx: ToolContext) -> ToolOutput:
    return await list_tool(ctx, POD, None)


async def pods_list_in_namespace(ctx: ToolContext) -> ToolOutput:
    return await list_tool(ctx, POD, ctx.req("namespace"))


async def pods_get(ctx: ToolContext) -> ToolOutput:
    namespace = ctx.text("namespace", default=DEFAULT_NAMESPACE)
    name = ctx.req("name")
    api = await ctx.api()
    obj = await get_object(api, POD, name, namespace)
    return object_yaml(obj, ctx.settings.output_max_chars)


async def pods_delete(ctx: ToolContext) -> ToolOutput:
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE)
    path = POD.path(namespace, name)
    api = await ctx.api()
    await api.call("DELETE", path)
    return ToolOutput(text=f"Pod {namespace}/{name} deleted on cluster {api.name!r}.\n")


async def metrics_available(api: Api) -> bool:
    """Whether the cluster serves the metrics API. The cached discovery answers when it lists
    the group; otherwise the group's own discovery document is asked for (one small request), so
    a metrics-server registered after the discovery was cached is seen at once."""
    disc = await api.discovery()
    if any(r.group == METRICS_GROUP for r in disc.resources):
        return True
    try:
        group = await api.get(f"/apis/{METRICS_GROUP}")
    except NotFound:
        return False
    if isinstance(group, dict) and group.get("versions"):
        api.forget_discovery()  # stale: the next discovery lists the new group
        return True
    return False


def metrics_missing(api: Api) -> ToolFailure:
    return ToolFailure(
        f"metrics API (metrics.k8s.io) not available on cluster {api.name!r}: install "
        "metrics-server (or another metrics provider) to get CPU and memory usage"
    )


async def pods_top(ctx: ToolContext) -> ToolOutput:
    all_ns = ctx.flag("all_namespaces", default=True)
    namespace, name = ctx.text("namespace"), ctx.text("name")
    if namespace or name:
        all_ns = False
    ns = None if all_ns else (namespace or DEFAULT_NAMESPACE)
    path = f"/apis/{METRICS_GROUP}/v1beta1"
    path += (f"/namespaces/{segment(ns, 'namespace')}" if ns else "") + "/pods"
    if name:
        path += f"/{segment(name, 'name')}"
    params: dict[str, str | int] = {}
    if ctx.text("label_selector"):
        params["labelSelector"] = ctx.req("label_selector")
    api = await ctx.api()
    if not await metrics_available(api):
        raise metrics_missing(api)
    body = await api.get(path, params=params)
    items = [body] if name else body.get("items") or []
    rows = [["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]]
    structured = []
    for item in items:
        meta = item.get("metadata") or {}
        for c in item.get("containers") or []:
            usage = c.get("usage") or {}
            rows.append(
                [
                    meta.get("namespace", ""),
                    meta.get("name", ""),
                    c.get("name", ""),
                    cpu_text(usage.get("cpu", "")),
                    memory_text(usage.get("memory", "")),
                ]
            )
            structured.append(
                {
                    "namespace": meta.get("namespace"),
                    "pod": meta.get("name"),
                    "container": c.get("name"),
                    **usage,
                }
            )
    if len(rows) == 1:
        return ToolOutput(text="No pod metrics found.\n", structured={"items": []})
    return ToolOutput(text=align(rows), structured={"items": structured})


async def pods_exec(ctx: ToolContext) -> ToolOutput:
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE) or ""
    command = ctx.str_list("command", required=True)
    container = ctx.text("container")
    api = await ctx.api()
    result = await api.exec(namespace, name, command, container, ctx.settings.exec_timeout_s)
    if result.error:
        raise ToolFailure(f"exec in pod {namespace}/{name} failed: {result.error}")
    cap = ctx.settings.output_max_chars
    text = result.stdout
    if result.stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + "[stderr]\n" + result.stderr
    if result.truncated:
        return _exec_stopped(result, text, cap, ctx.settings.exec_output_max_bytes())
    if result.exit_code not in (None, 0):
        text += f"\n[exit code {result.exit_code}]\n"
    if not text:
        text = "(command produced no output)\n"
    text = tail_cap(text, cap)
    return ToolOutput(
        text=text,
        structured={
            "stdout": result.stdout[-cap:],
            "stderr": result.stderr[-cap:],
            "exitCode": result.exit_code,
        },
        is_error=result.exit_code not in (None, 0),
    )


def _exec_stopped(result: ExecResult, text: str, cap: int, bound: int) -> ToolOutput:
    """The answer for a command whose output passed the bound: its beginning, and why."""
    kept = text[:cap]
    if "\n" in kept[cap // 2 :]:
        kept = kept[: kept.rindex("\n") + 1]
    note = (
        f"\n[output stopped: the command printed more than {bound} bytes, the most this server "
        f"reads of one exec (4 x output_max_chars); it stopped reading there and closed the exec "
        f"stream, so the exit code is unknown. The first {len(kept)} characters are shown. To "
        "see another part, filter in the command itself, e.g. ['sh', '-c', 'CMD | tail -n 200'] "
        "or '| grep PATTERN' or '| head -c 20000'.]\n"
    )
    return ToolOutput(
        text=kept + ("" if kept.endswith("\n") else "\n") + note,
        structured={
            "stdout": result.stdout[:cap],
            "stderr": result.stderr[:cap],
            "exitCode": None,
            "truncated": True,
            "bytesRead": result.bytes_read,
        },
    )


def tail_cap(text: str, max_chars: int) -> str:
    """Keep the end of a long log or command output and say what was dropped."""
    if len(text) <= max_chars:
        return text
    kept = text[-max_chars:]
    kept = kept[kept.find("\n") + 1 :] if "\n" in kept else kept
    return (
        f"[output truncated: showing the last {len(kept)} of {len(text)} characters; use a "
        "smaller tail or filter the command output]\n" + kept
    )


async def pods_log(ctx: ToolContext) -> ToolOutput:
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE) or ""
    tail = ctx.integer("tail", default=ctx.settings.log_tail_lines, minimum=0)
    query = log_query(ctx, namespace, name)
    flt = line_filter(ctx)
    api = await ctx.api()
    if flt is not None:
        return await grep_pod_log(ctx, api, query, flt, tail)
    text = await read_log(
        api,
        namespace,
        name,
        container=query.container,
        previous=query.previous,
        tail=tail,
        limit_bytes=ctx.settings.output_max_chars * 4,
        since_seconds=query.since_seconds,
        since_time=query.since_time,
    )
    if not text:
        text = f"(pod {namespace}/{name} has no log output{window_text(query)})\n"
    return ToolOutput(text=tail_cap(text, ctx.settings.output_max_chars))


async def pods_run(ctx: ToolContext) -> ToolOutput:
    image = ctx.req("image")
    namespace = ctx.text("namespace", default=DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    name = ctx.text("name") or f"mcp-run-{secrets.token_hex(3)}"
    port = ctx.integer("port", minimum=1)
    api = await ctx.api()
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "mcp-backend"}
    container: dict[str, Any] = {"name": name, "image": image}
    if port:
        container["ports"] = [{"containerPort": port}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [container]},
    }
    created = [await api.call("POST", POD.path(namespace), body=pod)]
    if port:
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"port": port, "targetPort": port}],
            },
        }
        created.append(await api.call("POST", SERVICE.path(namespace), body=svc))
    return ToolOutput(text=to_yaml(created))


_NS = prop("string", "Namespace of the pod (default: 'default')")
_SELECTORS = {
    "labelSelector": prop("string", "Kubernetes label selector (e.g. 'app=web,tier!=db')"),
    "fieldSelector": prop("string", "Kubernetes field selector (e.g. 'status.phase=Running')"),
}


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "pods_list",
            "List all the Kubernetes pods in the current cluster from all namespaces "
            "(compact table; output='yaml' for full objects; limit/continue to page)",
            {**_SELECTORS, **LIST_PROPS},
            (),
            R,
            pods_list,
            title="Pods: List",
        ),
        ToolSpec(
            "pods_list_in_namespace",
            "List all the Kubernetes pods in the specified namespace in the current cluster",
            {
                "namespace": prop("string", "Namespace to list pods from"),
                **_SELECTORS,
                **LIST_PROPS,
            },
            ("namespace",),
            R,
            pods_list_in_namespace,
            title="Pods: List in Namespace",
        ),
        ToolSpec(
            "pods_get",
            "Get a Kubernetes Pod in the current or provided namespace with the provided name",
            {"name": prop("string", "Name of the Pod"), "namespace": _NS},
            ("name",),
            R,
            pods_get,
            title="Pods: Get",
        ),
        ToolSpec(
            "pods_delete",
            "Delete a Kubernetes Pod in the current or provided namespace with the provided name",
            {"name": prop("string", "Name of the Pod to delete"), "namespace": _NS},
            ("name",),
            Annotations(False, True, True, True),
            pods_delete,
            title="Pods: Delete",
        ),
        ToolSpec(
            "pods_top",
            "List the resource consumption (CPU and memory) as recorded by the Kubernetes Metrics "
            "Server for the specified Kubernetes Pods",
            {
                "all_namespaces": prop(
                    "boolean",
                    "Whether to include pods from all namespaces "
                    "(ignored when namespace or name is given)",
                    default=True,
                ),
                "namespace": prop("string", "Namespace to get the Pods metrics from"),
                "name": prop("string", "Name of the Pod to get the metrics from"),
                "label_selector": prop("string", "Kubernetes label selector"),
            },
            (),
            R_IDEMPOTENT,
            pods_top,
            title="Pods: Top",
        ),
        ToolSpec(
            "pods_exec",
            "Execute a command in a Kubernetes Pod (shell access, run commands in container) in "
            "the current or provided namespace with the provided name and command",
            {
                "name": prop("string", "Name of the Pod where the command will be executed"),
                "command": prop(
                    "array",
                    "Command to execute in the Pod container, as a list of "
                    'strings (e.g. ["ls", "-l", "/tmp"])',
                    items={"type": "string"},
                ),
                "namespace": prop(
                    "string", "Namespace of the Pod where the command will be executed"
                ),
                "container": prop(
                    "string",
                    "Name of the Pod container where the command will be executed (Optional)",
                ),
            },
            ("name", "command"),
            Annotations(False, True, False, True),
            pods_exec,
            title="Pods: Exec",
        ),
        ToolSpec(
            "pods_log",
            "Get the logs of a Kubernetes Pod in the current or provided namespace with the "
            "provided name (the last 'tail' lines, 100 by default)",
            {
                "name": prop("string", "Name of the Pod to get the logs from"),
                "namespace": prop("string", "Namespace to get the Pod logs from"),
                "container": prop(
                    "string", "Name of the Pod container to get the logs from (Optional)"
                ),
                "previous": prop("boolean", "Return previous terminated container logs (Optional)"),
                "tail": prop(
                    "integer",
                    "Number of lines to retrieve from the end of the logs (Optional, default: 100; "
                    "with grep: the number of matching lines)",
                    default=100,
                    minimum=0,
                ),
                **LOG_FILTER_PROPS,
            },
            ("name",),
            R,
            pods_log,
            title="Pods: Log",
        ),
        ToolSpec(
            "pods_run",
            "Run a Kubernetes Pod in the current or provided namespace with the provided container "
            "image and optional name (and a Service when a port is given)",
            {
                "image": prop("string", "Container Image to run in the Pod"),
                "name": prop("string", "Name of the Pod (Optional, random name if not provided)"),
                "namespace": prop("string", "Namespace to run the Pod in"),
                "port": prop(
                    "number",
                    "TCP/IP port to expose from the Pod container "
                    "(Optional, no port exposed if not provided)",
                ),
            },
            ("image",),
            Annotations(False, False, False, True),
            pods_run,
            title="Pods: Run",
        ),
    ]
