"""Rollout tools for Deployments, StatefulSets and DaemonSets: status, history, restart, undo
(``kubectl rollout``). One tool per action, so read-only mode and per-tool roles can tell
reading a rollout from changing one."""

from __future__ import annotations

from typing import Any

from mcp_backend.operations import rollout
from mcp_backend.rendering.output import ToolOutput, align, truncate
from mcp_backend.tools.base import Annotations, R, ToolContext, ToolSpec, prop
from mcp_backend.tools.pods import DEFAULT_NAMESPACE


async def _workload(ctx: ToolContext) -> tuple[Any, rollout.Workload]:
    namespace = ctx.text("namespace", default=DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    kind, name = ctx.req("kind"), ctx.req("name")
    api = await ctx.api()
    w = await rollout.read_workload(api, kind, name, namespace)
    return api, w


def _identity(api: Any, w: rollout.Workload) -> dict[str, Any]:
    return {"cluster": api.name, "kind": w.kind, "name": w.name, "namespace": w.namespace}


async def rollout_status(ctx: ToolContext) -> ToolOutput:
    api, w = await _workload(ctx)
    status = rollout.rollout_status(w)
    structured = {
        **_identity(api, w),
        "done": status.done,
        "failed": status.failed,
        "message": status.message,
        **status.figures,
    }
    note = (
        ""
        if status.done or status.failed
        else "\n(a snapshot: call rollout_status again to follow the rollout)"
    )
    return ToolOutput(text=status.message + note + "\n", structured=structured)


async def rollout_history(ctx: ToolContext) -> ToolOutput:
    api, w = await _workload(ctx)
    revisions = await rollout.history(api, w)
    if not revisions:
        return ToolOutput(
            text=f"{w.describe()} has no rollout history on cluster {api.name!r}.\n",
            structured={**_identity(api, w), "revisions": []},
        )
    rows = [["REVISION", "CURRENT", "CHANGE-CAUSE", "IMAGES"]]
    items = []
    for rev in revisions:
        rows.append(
            [
                str(rev.number),
                "*" if rev.current else "",
                rev.change_cause or "<none>",
                ",".join(rev.images),
            ]
        )
        items.append(
            {
                "revision": rev.number,
                "current": rev.current,
                "changeCause": rev.change_cause,
                "images": rev.images,
                "source": rev.source["metadata"]["name"],
            }
        )
    text = f"{w.describe()} on cluster {api.name!r}:\n" + align(rows)
    text, _ = truncate(text, ctx.settings.output_max_chars, "The oldest revisions come first")
    return ToolOutput(text=text, structured={**_identity(api, w), "revisions": items})


async def rollout_restart(ctx: ToolContext) -> ToolOutput:
    api, w = await _workload(ctx)
    result = await rollout.restart(api, w)
    template_meta = ((result.get("spec") or {}).get("template") or {}).get("metadata") or {}
    stamp = (template_meta.get("annotations") or {}).get(rollout.RESTARTED_AT)
    text = (
        f"{w.describe()} restarted on cluster {api.name!r} (pod template stamped "
        f"{rollout.RESTARTED_AT}={stamp}); its controller now replaces the pods: follow with "
        "rollout_status.\n"
    )
    strategy = (w.spec.get("updateStrategy") or {}).get("type")
    if strategy == "OnDelete":
        text += f"Note: {w.describe()} uses the OnDelete strategy: pods change only when deleted.\n"
    return ToolOutput(
        text=text,
        structured={
            **_identity(api, w),
            "restartedAt": stamp,
            "generation": result.get("metadata", {}).get("generation"),
        },
    )


async def rollout_undo(ctx: ToolContext) -> ToolOutput:
    wanted = ctx.integer("revision", minimum=0)
    api, w = await _workload(ctx)
    revisions = await rollout.history(api, w)
    target = rollout.pick_revision(revisions, wanted or None, w)
    changed, _ = await rollout.undo(api, w, target)
    if not changed:
        text = (
            f"{w.describe()}: skipped rollback, the current pod template already is revision "
            f"{target.number}'s (cluster {api.name!r}).\n"
        )
    else:
        text = (
            f"{w.describe()} rolled back to the pod template of revision {target.number} on "
            f"cluster {api.name!r} (images: {', '.join(target.images)}); follow with "
            "rollout_status.\n"
        )
    return ToolOutput(
        text=text,
        structured={**_identity(api, w), "toRevision": target.number, "changed": changed},
    )


_TARGET = {
    "kind": prop(
        "string",
        "Kind of the workload: Deployment, StatefulSet or DaemonSet",
        enum=["Deployment", "StatefulSet", "DaemonSet"],
    ),
    "name": prop("string", "Name of the workload"),
    "namespace": prop("string", "Namespace of the workload (default: 'default')"),
}


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "rollout_status",
            "Show the rollout status of a Deployment, StatefulSet or DaemonSet (like 'kubectl "
            "rollout status', one reading: whether the rollout is done, and what it waits for)",
            dict(_TARGET),
            ("kind", "name"),
            R,
            rollout_status,
            title="Rollout: Status",
        ),
        ToolSpec(
            "rollout_history",
            "List the revisions of a Deployment, StatefulSet or DaemonSet (like 'kubectl "
            "rollout history'), with each revision's change cause and images",
            dict(_TARGET),
            ("kind", "name"),
            R,
            rollout_history,
            title="Rollout: History",
        ),
        ToolSpec(
            "rollout_restart",
            "Restart a Deployment, StatefulSet or DaemonSet (like 'kubectl rollout restart'): "
            "its controller replaces every pod, following the workload's update strategy",
            dict(_TARGET),
            ("kind", "name"),
            Annotations(False, True, False, True),
            rollout_restart,
            title="Rollout: Restart",
        ),
        ToolSpec(
            "rollout_undo",
            "Roll a Deployment, StatefulSet or DaemonSet back to an earlier revision's pod "
            "template (like 'kubectl rollout undo'; rollout_history lists the revisions)",
            {
                **_TARGET,
                "revision": prop(
                    "integer",
                    "Revision to roll back to (Optional, default: the previous revision)",
                    minimum=0,
                ),
            },
            ("kind", "name"),
            Annotations(False, True, False, True),
            rollout_undo,
            title="Rollout: Undo",
        ),
    ]
