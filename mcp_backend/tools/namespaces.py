"""Namespace tools."""

from __future__ import annotations

from mcp_backend.kube.discovery import NAMESPACE
from mcp_backend.rendering.output import ToolOutput
from mcp_backend.tools.base import LIST_PROPS, R, ToolContext, ToolSpec, list_tool, prop


async def namespaces_list(ctx: ToolContext) -> ToolOutput:
    return await list_tool(ctx, NAMESPACE, None)


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
