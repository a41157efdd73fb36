"""Applying manifests (``resources_create_or_update``): the YAML or JSON text read into objects,
each planned (kind resolved and checked, target namespace) before anything is sent, then applied
in order with server-side apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_backend.errors import InvalidArguments, ToolFailure
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import ResourceInfo

FIELD_MANAGER = "mcp-backend"


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """Objects of a YAML or JSON text (several YAML documents allowed); errors name line/column."""
    if not text or not text.strip():
        raise InvalidArguments("argument 'resource' is empty: pass a YAML or JSON manifest")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "input"
        raise InvalidArguments(f"resource is not valid YAML/JSON at {where}: {problem}") from None
    except RecursionError:
        raise InvalidArguments(
            "resource is nested too deeply to be a Kubernetes manifest: flatten it"
        ) from None
    objects: list[dict[str, Any]] = []
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            raise InvalidArguments(f"document {i} is a {type(doc).__name__}, not an object")
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc["items"]
            if not isinstance(items, list):
                raise InvalidArguments(f"document {i} is a {kind} whose 'items' is not a list")
            objects += [o for o in items if isinstance(o, dict)]
            continue
        objects.append(doc)
    for i, obj in enumerate(objects, 1):
        _check_identity(i, obj)
    if not objects:
        raise InvalidArguments("argument 'resource' holds no objects")
    return objects


def _check_identity(index: int, obj: Mapping[str, Any]) -> None:
    """apiVersion, kind and metadata.name present and strings, metadata an object."""
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidArguments(f"object {index}: metadata must be an object")
    missing = [k for k in ("apiVersion", "kind") if not obj.get(k)]
    if not (metadata or {}).get("name"):
        missing.append("metadata.name")
    if missing:
        raise InvalidArguments(f"object {index} lacks {', '.join(missing)}")
    for field, value in (
        ("apiVersion", obj["apiVersion"]),
        ("kind", obj["kind"]),
        ("metadata.name", metadata["name"] if metadata else None),
        ("metadata.namespace", (metadata or {}).get("namespace", "")),
    ):
        if not isinstance(value, str):
            raise InvalidArguments(
                f"object {index}: {field} must be a string, not {type(value).__name__}"
            )


@dataclass(frozen=True)
class PlannedApply:
    """One object of a manifest, checked and ready to apply: its resource and target."""

    index: int
    obj: dict[str, Any]
    info: ResourceInfo
    namespace: str | None

    def describe(self) -> str:
        name = self.obj["metadata"]["name"]
        where = f"{self.namespace}/{name}" if self.namespace else name
        return f"object {self.index} ({self.info.kind} {where!r})"


async def plan_apply(
    api: Api, objects: list[dict[str, Any]], default_namespace: str
) -> list[PlannedApply]:
    """Check every object of a manifest before any is applied, so a refusal never leaves the
    manifest half applied: the kind is served and not denied (a CRD and its objects therefore
    go in two calls: discovery knows the kind once the CRD is established), the name and
    namespace are valid, and the object is not one the access policy refuses whatever its kind
    allows (a service-account-token Secret)."""
    plans: list[PlannedApply] = []
    for index, obj in enumerate(objects, 1):
        what = f"object {index} ({obj['kind']} {obj['metadata']['name']!r})"
        try:
            info = await api.resolve(str(obj["apiVersion"]), str(obj["kind"]))
            namespace: str | None = None
            meta = obj["metadata"]
            if info.namespaced:
                namespace = meta.get("namespace") or default_namespace
                info.path(namespace, meta["name"])  # checks both as path segments
            else:
                info.path(None, meta["name"])
            api.check_object(info.group, info.resource, obj, f"{info.kind} {meta['name']!r}")
        except ToolFailure as exc:
            raise _prefixed(exc, f"nothing was applied: {what}: ") from None
        plans.append(PlannedApply(index, obj, info, namespace))
    return plans


def _prefixed(exc: ToolFailure, prefix: str) -> ToolFailure:
    exc.message = prefix + exc.message
    exc.args = (exc.message,)
    return exc


async def apply_planned(api: Api, plan: PlannedApply) -> dict[str, Any]:
    """Server-side apply (field manager ``mcp-backend``, conflicts forced) of one object."""
    obj = plan.obj
    meta = obj.setdefault("metadata", {})
    if plan.namespace is not None:
        meta["namespace"] = plan.namespace
    else:
        meta.pop("namespace", None)
    body = yaml.safe_dump(obj).encode()
    result: dict[str, Any] = await api.call(
        "PATCH",
        plan.info.path(plan.namespace, meta["name"]),
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )
    return result


async def apply_all(api: Api, plans: list[PlannedApply]) -> list[dict[str, Any]]:
    """Apply checked objects in order; when one fails, the error says which were applied."""
    results: list[dict[str, Any]] = []
    for plan in plans:
        try:
            results.append(await apply_planned(api, plan))
        except ToolFailure as exc:
            if not results:
                raise _prefixed(exc, f"nothing was applied: {plan.describe()}: ") from None
            done = ", ".join(p.describe() for p in plans[: len(results)])
            raise _prefixed(
                exc, f"applied {done}; then {plan.describe()} failed, the rest was not applied: "
            ) from None
    return results
