"""Configuration tools: the clusters this server can reach, without any secret."""

from __future__ import annotations

from mcp_backend.rendering.output import ToolOutput, align, to_yaml
from mcp_backend.tools.base import Annotations, ToolContext, ToolSpec, prop


async def configuration_contexts_list(ctx: ToolContext) -> ToolOutput:
    rows = [["CURRENT", "NAME", "SERVER"]]
    items = []
    for cluster in ctx.clusters.clusters.values():
        default = cluster.config.default
        rows.append(["*" if default else "", cluster.name, cluster.config.server])
        items.append({"name": cluster.name, "server": cluster.config.server, "default": default})
    text = "Available contexts (pass one as `context`):\n" + align(rows)
    return ToolOutput(text=text, structured={"contexts": items})


async def configuration_view(ctx: ToolContext) -> ToolOutput:
    minified = ctx.flag("minified", default=True)
    clusters = list(ctx.clusters.clusters.values())
    if minified:
        clusters = [ctx.clusters.default]
    view = {
        "current-context": ctx.clusters.default.name,
        "clusters": [c.public_view() for c in clusters],
        "credentials": "none stored: every request uses the caller's own bearer token",
    }
    return ToolOutput(text=to_yaml(view), structured=view)


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "configuration_contexts_list",
            "List all available contexts (clusters) this server can reach, and the default one",
            {},
            (),
            Annotations(True, False, True, False),
            configuration_contexts_list,
            title="Configuration: Contexts List",
            cluster_aware=False,
        ),
        ToolSpec(
            "configuration_view",
            "Get the current Kubernetes configuration content as a kubeconfig-like YAML (servers "
            "and TLS mode only: this server stores no credentials)",
            {
                "minified": prop(
                    "boolean",
                    "Return a minified version of the configuration. If set "
                    "to true, keeps only the current-context and the relevant pieces. "
                    "If set to false, all contexts are returned (Optional, default "
                    "true)",
                    default=True,
                )
            },
            (),
            Annotations(True, False, False, True),
            configuration_view,
            title="Configuration: View",
            cluster_aware=False,
        ),
    ]
