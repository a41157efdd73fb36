"""Prompts: ``cluster-health-check`` (same name and arguments as the reference server)."""

from __future__ import annotations

import mcp_types as types

from mcp_backend.errors import InvalidArguments

CLUSTER_HEALTH_CHECK = types.Prompt(
    name="cluster-health-check",
    title="Cluster health check",
    description="Check the health of the cluster (or one namespace): nodes, failing workloads, "
    "warning events, and a summary of what to fix first",
    arguments=[
        types.PromptArgument(
            name="namespace",
            description="Namespace to check (all namespaces when omitted)",
            required=False,
        ),
        types.PromptArgument(
            name="check_events",
            description="Whether to review Warning events (true/false, default true)",
            required=False,
        ),
    ],
)


def cluster_health_check(arguments: dict[str, str] | None) -> types.GetPromptResult:
    """The instructions an agent follows to assess cluster health with this server's tools."""
    args = arguments or {}
    namespace = (args.get("namespace") or "").strip()
    check_events = (args.get("check_events") or "true").strip().lower()
    if check_events not in ("true", "false"):
        raise InvalidArguments("check_events must be 'true' or 'false'")
    scope = f"namespace '{namespace}'" if namespace else "all namespaces"
    ns_arg = f', "namespace": "{namespace}"' if namespace else ""
    steps = [
        f"Assess the health of the Kubernetes cluster, scope: {scope}. Use these tools:",
        '1. `nodes_top` (or `resources_list` {"apiVersion": "v1", "kind": "Node"}) for node '
        "readiness and pressure.",
        f'2. `pods_list` with {{"fieldSelector": "status.phase!=Running"{ns_arg}}} to find pods '
        "that are not running (also check restarts in the table).",
        "3. For every failing Deployment, StatefulSet, DaemonSet or Job, call `workload_diagnose` "
        "once: it returns pod states, events and log tails in one answer.",
    ]
    if check_events == "true":
        steps.append(
            f'4. `events_list` with {{"fieldSelector": "type=Warning"{ns_arg}}} for '
            "recent warnings."
        )
    steps.append(
        "Finish with a short report: healthy parts, problems ranked by impact, and the "
        "concrete fix for each. Do not change anything without being asked."
    )
    return types.GetPromptResult(
        description=f"Cluster health check ({scope})",
        messages=[
            types.PromptMessage(
                role="user", content=types.TextContent(type="text", text="\n".join(steps))
            )
        ],
    )
