"""``workload_diagnose``: one call that gathers what an agent needs about a failing workload."""

from __future__ import annotations

from mcp_backend.operations.diagnose import ENTRY_KINDS, diagnose
from mcp_backend.rendering.output import ToolOutput, truncate
from mcp_backend.tools.base import R, ToolContext, ToolSpec, prop
from mcp_backend.tools.pods import DEFAULT_NAMESPACE


async def workload_diagnose(ctx: ToolContext) -> ToolOutput:
    kind, name = ctx.req("kind"), ctx.req("name")
    namespace = ctx.text("namespace", default=DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    log_lines = ctx.integer("log_lines", default=20, minimum=1) or 20
    out = await diagnose(await ctx.api(), kind, name, namespace, log_lines)
    out.text, _ = truncate(
        out.text, ctx.settings.output_max_chars, "Lower log_lines or diagnose a single Pod"
    )
    return out


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "workload_diagnose",
            "Diagnose a workload in ONE call: owner chain, desired/ready replicas, every pod's "
            "phase and container states (reasons, exit codes, restarts), recent events of all "
            "those objects, and log tails of containers that are not ready or restarted. Use it "
            "first when something is failing.",
            {
                "kind": prop(
                    "string",
                    f"Kind of the workload: {', '.join(ENTRY_KINDS)}",
                    enum=list(ENTRY_KINDS),
                ),
                "name": prop("string", "Name of the workload"),
                "namespace": prop("string", "Namespace of the workload (default: 'default')"),
                "log_lines": prop(
                    "integer",
                    "Log lines per unhealthy container (default 20)",
                    default=20,
                    minimum=1,
                ),
            },
            ("kind", "name"),
            R,
            workload_diagnose,
            title="Workload: Diagnose",
        )
    ]
