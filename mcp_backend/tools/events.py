"""Event tools."""

from __future__ import annotations

from mcp_backend.kube.discovery import EVENT
from mcp_backend.rendering.output import ToolOutput
from mcp_backend.tools.base import LIST_PROPS, R, ToolContext, ToolSpec, list_tool, prop


async def events_list(ctx: ToolContext) -> ToolOutput:
    return await list_tool(ctx, EVENT, ctx.text("namespace"))


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "events_list",
            "List all the Kubernetes events in the current cluster from all namespaces (or one "
            "namespace); fieldSelector narrows, e.g. 'type=Warning' or "
            "'involvedObject.name=web-1'",
            {
                "namespace": prop(
                    "string",
                    "Optional Namespace to retrieve the events from. If "
                    "not provided, will list events from all namespaces",
                ),
                "fieldSelector": prop("string", "Optional Kubernetes field selector"),
                **LIST_PROPS,
            },
            (),
            R,
            events_list,
            title="Events: List",
        )
    ]
