"""Server-side dry run of ``resources_create_or_update``: what the API server would make of each
object (its admission, defaulting and validation included, nothing stored) and the difference to
the live object, both read with the caller's token.

Secret values are redacted on both sides before the comparison, like every response: a change of
a Secret's value does not show, only its keys.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_backend.errors import NotFound, ToolFailure
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import ResourceInfo
from mcp_backend.operations.apply import FIELD_MANAGER
from mcp_backend.rendering.output import to_yaml

# Fields every write changes: left out of the comparison so the diff shows what matters.
_VOLATILE_METADATA = ("managedFields", "resourceVersion")


@dataclass(frozen=True)
class DryRun:
    """One object's dry run: the live object (None: it would be created) and the result."""

    info: ResourceInfo
    name: str
    namespace: str | None
    live: dict[str, Any] | None
    result: dict[str, Any]
    diff: str

    @property
    def action(self) -> str:
        if self.live is None:
            return "create"
        return "update" if self.diff else "unchanged"

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.info.kind} {where}{self.name}"


def _comparable(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return ""
    copy = {**obj, "metadata": dict(obj.get("metadata") or {})}
    for key in _VOLATILE_METADATA:
        copy["metadata"].pop(key, None)
    return to_yaml(copy)


def unified_diff(live: dict[str, Any] | None, result: dict[str, Any], label: str) -> str:
    """``diff -u`` of the live object and the dry run's result (empty when they agree)."""
    before = _comparable(live).splitlines(keepends=True)
    after = _comparable(result).splitlines(keepends=True)
    lines = difflib.unified_diff(
        before,
        after,
        fromfile=f"{label} (live)" if live is not None else "/dev/null",
        tofile=f"{label} (after apply)",
    )
    return "".join(lines)


async def dry_run_apply(api: Api, obj: dict[str, Any], default_namespace: str) -> DryRun:
    """Server-side apply of ``obj`` with ``dryRun=All`` (field manager ``mcp-backend``,
    conflicts forced, as the real apply), compared with the live object."""
    info = await api.resolve(str(obj["apiVersion"]), str(obj["kind"]))
    meta = obj.setdefault("metadata", {})
    namespace: str | None = None
    if info.namespaced:
        namespace = meta.get("namespace") or default_namespace
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    name = str(meta["name"])
    path = info.path(namespace, name)
    try:
        live: dict[str, Any] | None = await api.get(path)
    except NotFound:
        live = None
    result: dict[str, Any] = await api.call(
        "PATCH",
        path,
        params={"fieldManager": FIELD_MANAGER, "force": "true", "dryRun": "All"},
        body=yaml.safe_dump(obj).encode(),
        content_type="application/apply-patch+yaml",
    )
    label = f"{info.kind} {namespace + '/' if namespace else ''}{name}"
    return DryRun(info, name, namespace, live, result, unified_diff(live, result, label))


async def dry_run_all(
    api: Api, objects: list[dict[str, Any]], default_namespace: str
) -> list[DryRun]:
    """Dry runs of every object in order; a failure names the object it happened on."""
    runs: list[DryRun] = []
    for i, obj in enumerate(objects, 1):
        try:
            runs.append(await dry_run_apply(api, obj, default_namespace))
        except ToolFailure as exc:
            meta = obj.get("metadata") or {}
            exc.message = (
                f"dry run of object {i} ({obj.get('kind')} {meta.get('name')!r}) failed, nothing "
                f"was changed: {exc.message}"
            )
            exc.args = (exc.message,)
            raise
    return runs
