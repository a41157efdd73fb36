"""Node tools: kubelet logs and stats through the node proxy, and metrics."""

from __future__ import annotations

import json
from typing import Any

from mcp_backend.errors import ClusterError, InvalidArguments, ToolFailure, Unreachable
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import NODE, segment
from mcp_backend.kube.streams import TextTail
from mcp_backend.rendering.output import ToolOutput, align, truncate
from mcp_backend.rendering.quantities import cpu_text, memory_text
from mcp_backend.tools.base import R_IDEMPOTENT, R, ToolContext, ToolSpec, prop
from mcp_backend.tools.pods import METRICS_GROUP, metrics_available, metrics_missing, tail_cap


async def _node_proxy(api: Api, node: str, sub: str, **kwargs: object) -> Any:
    """GET the kubelet's ``/<sub>`` through the API server's node proxy, as text (or the
    :class:`TextTail` the ``tail_bytes`` keyword asks for)."""
    try:
        text = await api.get(f"{NODE.path(None, node)}/proxy/{sub}", text=True, **kwargs)
    except ClusterError as exc:
        if exc.status in (401, 403) or (exc.status == 404 and exc.reason == "NotFound"):
            raise  # the API server's own answer: bad token, RBAC, or no such node
        if isinstance(exc, Unreachable):
            if "did not answer" in exc.message:
                raise
            raise ToolFailure(
                f"node {node!r} on cluster {api.name!r} did not answer through the node proxy "
                f"({exc.message}); the kubelet may be down or unreachable from the API server"
            ) from None
        if exc.reason:  # a Status object: the API server could not proxy to the kubelet
            raise ToolFailure(
                f"cluster {api.name!r} could not proxy to the kubelet of node {node!r} "
                f"(HTTP {exc.status}): {exc.message}"
            ) from None
        # The kubelet itself answered with an error (plain text, no Status object).
        raise ToolFailure(
            f"the kubelet of node {node!r} on cluster {api.name!r} answered GET /{sub} with "
            f"HTTP {exc.status} through the node proxy: it does not serve this endpoint here "
            f"(emulated kubelets such as kwok or virtual nodes serve only part of the kubelet "
            f"API). Details: {exc.message}"
        ) from None
    return text


# The kubelet's node log query honours options (tailLines) for journald services only: a file
# query with options is refused (406 "cannot specify file with options"), and a service that
# resolves to a file under /var/log answers 200 with this notice instead of the log
# (pkg/kubelet/kubelet_server_journal.go). The tool then reads the whole file and tails it itself.
_OPTIONS_ON_FILE = "options present and query resolved to log files"
# How much of a log file's end is read at least (4x the output cap when that is more): a file
# under /var/log may be gigabytes and the kubelet cannot tail it.
_MIN_TAIL_WINDOW = 256 * 1024


async def nodes_log(ctx: ToolContext) -> ToolOutput:
    name, query = ctx.req("name"), ctx.req("query")
    if ".." in query.split("/"):
        raise InvalidArguments(
            "query must name a service (e.g. 'kubelet') or a log file under /var/log "
            "(e.g. '/kubelet.log'), without '..'"
        )
    tail = ctx.integer("tailLines", default=100, minimum=0) or 0
    api = await ctx.api()
    # Files are relative to /var/log: kubelet v1.36 refuses an absolute one ("path escapes from
    # parent"), and a name without '/' is looked up there as <name>, <name>.log, <name>/<name>.log.
    query = query.lstrip("/") or query
    is_file = "/" in query or "\\" in query
    params: dict[str, str | int] = {"query": query}  # the kubelet's NodeLogQuery
    if tail and not is_file:
        params["tailLines"] = tail
    # The kubelet's /logs/ route declares no content type: go-restful answers 406 unless the
    # Accept header allows anything. A file comes whole, whatever its size: only its end is kept.
    window = max(_MIN_TAIL_WINDOW, 4 * ctx.settings.output_max_chars)
    kw: dict[str, Any] = {"accept": "text/plain, */*", "tail_bytes": window}
    got: TextTail = await _node_proxy(api, name, "logs/", params=params, **kw)
    tailed_by_kubelet = "tailLines" in params
    if tailed_by_kubelet and got.text.lstrip().startswith(_OPTIONS_ON_FILE):
        got = await _node_proxy(api, name, "logs/", params={"query": query}, **kw)
        tailed_by_kubelet = False
    text = got.text
    if tail and not tailed_by_kubelet:
        text = "".join(text.splitlines(keepends=True)[-tail:])
    if got.skipped:
        text = f"[only the last {window} bytes of a longer log were read: its end]\n" + text
    return ToolOutput(text=tail_cap(text or "(empty log)\n", ctx.settings.output_max_chars))


async def nodes_stats_summary(ctx: ToolContext) -> ToolOutput:
    name = ctx.req("name")
    api = await ctx.api()
    raw = await _node_proxy(api, name, "stats/summary")
    try:
        summary = json.loads(raw)
    except ValueError:
        raise ToolFailure(f"node {name!r} returned a stats summary that is not JSON") from None
    text, _ = truncate(
        json.dumps(summary, indent=1),
        ctx.settings.output_max_chars,
        "Use pods_top / nodes_top for usage totals",
    )
    return ToolOutput(text=text, structured=summary if isinstance(summary, dict) else None)


async def nodes_top(ctx: ToolContext) -> ToolOutput:
    name = ctx.text("name")
    params: dict[str, str | int] = {}
    if ctx.text("label_selector"):
        params["labelSelector"] = ctx.req("label_selector")
    path = f"/apis/{METRICS_GROUP}/v1beta1/nodes"
    if name:
        path += f"/{segment(name, 'name')}"
    api = await ctx.api()
    if not await metrics_available(api):
        raise metrics_missing(api)
    body = await api.get(path, params=params)
    items = [body] if name else body.get("items") or []
    rows = [["NAME", "CPU(cores)", "MEMORY(bytes)"]]
    structured = []
    for item in items:
        usage = item.get("usage") or {}
        node = (item.get("metadata") or {}).get("name", "")
        rows.append([node, cpu_text(usage.get("cpu", "")), memory_text(usage.get("memory", ""))])
        structured.append({"name": node, **usage})
    if len(rows) == 1:
        return ToolOutput(text="No node metrics found.\n", structured={"items": []})
    return ToolOutput(text=align(rows), structured={"items": structured})


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "nodes_log",
            "Get logs from a Kubernetes node (kubelet, kube-proxy, or other system logs) through "
            "the node proxy; query names the log file (e.g. 'kubelet.log')",
            {
                "name": prop("string", "Name of the node to get logs from"),
                "query": prop(
                    "string",
                    "query specifies services(s) or files from which to "
                    'return logs (required). Example: "kubelet" to fetch kubelet '
                    'logs, "/<log-file-name>" to fetch a specific log file',
                ),
                "tailLines": prop(
                    "integer",
                    "Number of lines to retrieve from the end of the "
                    "logs (Optional, 0 means all logs)",
                    default=100,
                    minimum=0,
                ),
            },
            ("name", "query"),
            R,
            nodes_log,
            title="Node: Log",
        ),
        ToolSpec(
            "nodes_stats_summary",
            "Get detailed resource usage statistics from a Kubernetes node via the kubelet's "
            "Summary API (CPU, memory, filesystem, network of the node and its pods)",
            {"name": prop("string", "Name of the node to get stats from")},
            ("name",),
            R,
            nodes_stats_summary,
            title="Node: Stats Summary",
        ),
        ToolSpec(
            "nodes_top",
            "List the resource consumption (CPU and memory) as recorded by the Kubernetes Metrics "
            "Server for the specified Kubernetes Nodes or all nodes in the cluster",
            {
                "name": prop(
                    "string",
                    "Name of the Node to get the resource consumption from "
                    "(Optional, all Nodes if not provided)",
                ),
                "label_selector": prop(
                    "string",
                    "Kubernetes label selector (e.g. "
                    "'node-role.kubernetes.io/worker=') to filter nodes",
                ),
            },
            (),
            R_IDEMPOTENT,
            nodes_top,
            title="Nodes: Top",
        ),
    ]
