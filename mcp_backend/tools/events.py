"""Event tools."""

from __future__ import annotations

from mcp_backend.discovery import EVENT
from mcp_backend.objects import ListQuery, list_objects
from mcp_backend.output import ToolOutput
from mcp_backend.tools.base import LIST_PROPS, R, ToolContext, ToolSpec, prop


async def events_list(ctx: ToolContext) -> ToolOutput:
    api = await ctx.api()
    query = ListQuery(
        namespace=ctx.text("namespace"),
        field_selector=ctx.text("fieldSelector"),
        limit=ctx.integer("limit", minimum=1),
        cont=ctx.text("continue"),
        output=ctx.text("output", default="table") or "table",
    )
    return await list_objects(
        api,
        EVENT,
        query,
        default_limit=ctx.settings.default_list_limit,
        max_chars=ctx.settings.output_max_chars,
    )


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
