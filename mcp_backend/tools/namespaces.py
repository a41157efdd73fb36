"""Namespace tools."""

from __future__ import annotations

from mcp_backend.discovery import NAMESPACE
from mcp_backend.objects import ListQuery, list_objects
from mcp_backend.output import ToolOutput
from mcp_backend.tools.base import LIST_PROPS, R, ToolContext, ToolSpec, prop


async def namespaces_list(ctx: ToolContext) -> ToolOutput:
    api = await ctx.api()
    query = ListQuery(
        field_selector=ctx.text("fieldSelector"),
        label_selector=ctx.text("labelSelector"),
        limit=ctx.integer("limit", minimum=1),
        cont=ctx.text("continue"),
        output=ctx.text("output", default="table") or "table",
    )
    return await list_objects(
        api,
        NAMESPACE,
        query,
        default_limit=ctx.settings.default_list_limit,
        max_chars=ctx.settings.output_max_chars,
    )


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "namespaces_list",
            "List all the Kubernetes namespaces in the current cluster",
            {
                "fieldSelector": prop("string", "Optional Kubernetes field selector"),
                "labelSelector": prop("string", "Optional Kubernetes label selector"),
                **LIST_PROPS,
            },
            (),
            R,
            namespaces_list,
            title="Namespaces: List",
        )
    ]
