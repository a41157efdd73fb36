"""The tool set, one module per resource family; :func:`all_tools` builds the registry."""

from __future__ import annotations

from mcp_backend.tools import (
    access_review,
    config,
    diagnose,
    events,
    helm,
    helm_release,
    namespaces,
    nodes,
    pods,
    resources,
    rollout,
)
from mcp_backend.tools.base import ToolRegistry, ToolSpec


def all_tools() -> ToolRegistry:
    """Every tool this server knows, in a registry that refuses duplicate names."""
    specs: list[ToolSpec] = []
    for module in (
        config,
        events,
        helm,
        helm_release,
        namespaces,
        nodes,
        pods,
        resources,
        diagnose,
        rollout,
        access_review,
    ):
        specs += module.tools()
    return ToolRegistry(specs)
