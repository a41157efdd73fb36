"""``resources_create_or_update`` with ``dryRun: true``: the server-side dry run's result and
its diff against the live objects (:mod:`mcp_backend.operations.dry_run`); nothing is changed."""

from __future__ import annotations

from mcp_backend.operations.apply import parse_manifests
from mcp_backend.operations.dry_run import dry_run_all
from mcp_backend.rendering.output import ToolOutput, to_yaml, truncate
from mcp_backend.tools.base import ToolContext, prop
from mcp_backend.tools.pods import DEFAULT_NAMESPACE

DRY_RUN_PROP = prop(
    "boolean",
    "Only a server-side dry run: return what the API server would store (admission, "
    "defaults and validation applied) and a diff against the live object; nothing is changed "
    "(Optional, default: false)",
    default=False,
)
REDACTION_NOTE = (
    "(Secret values are redacted on both sides: a changed value does not show in the diff, "
    "only added or removed keys)\n"
)
_VERBS = {"create": "would be created", "update": "would change", "unchanged": "is unchanged"}


async def dry_run_output(ctx: ToolContext) -> ToolOutput:
    objects = parse_manifests(ctx.req("resource"))
    api = await ctx.api()
    runs = await dry_run_all(api, objects, DEFAULT_NAMESPACE)
    parts = [
        f"# dry run on cluster {api.name!r} (server-side apply, dryRun=All): nothing was "
        f"changed. {len(runs)} object(s):\n"
    ]
    for run in runs:
        parts.append(f"\n## {run.describe()} {_VERBS[run.action]}\n")
        if run.info.kind == "Secret" and run.info.group == "" and ctx.settings.redact_secrets:
            parts.append(REDACTION_NOTE)
        if run.action != "unchanged":
            parts.append(run.diff)
    parts.append("\n# the objects as the API server would store them\n")
    results = [run.result for run in runs]
    parts.append(to_yaml(results if len(results) > 1 else results[0]))
    text, cut = truncate(
        "".join(parts),
        ctx.settings.output_max_chars,
        "Dry-run fewer objects at a time to see every diff in full",
    )
    structured = {
        "dryRun": True,
        "cluster": api.name,
        "objects": [
            {
                "apiVersion": run.info.api_version,
                "kind": run.info.kind,
                "name": run.name,
                "namespace": run.namespace,
                "action": run.action,
                "diffLines": run.diff.count("\n"),
            }
            for run in runs
        ],
        **({"truncated": True} if cut else {}),
    }
    return ToolOutput(text=text, structured=structured)
