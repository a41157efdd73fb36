"""Generic object operations on any served kind: list, get, apply, delete, scale.

Domain layer between the thin tool handlers and the API client; returns :class:`ToolOutput`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_backend.clusters import Api
from mcp_backend.discovery import POD, ResourceInfo
from mcp_backend.errors import InvalidArguments, NotFound
from mcp_backend.kube import TABLE_ACCEPT
from mcp_backend.output import (
    ToolOutput,
    continuation_note,
    list_to_yaml,
    render_table,
    to_yaml,
    truncate,
)

FIELD_MANAGER = "mcp-backend"
STRUCTURED_ROWS_MAX = 100
NARROW_HINT = (
    "Narrow the query with namespace, labelSelector or fieldSelector, or page with limit "
    "and continue"
)


@dataclass(frozen=True)
class ListQuery:
    """Arguments shared by every list tool."""

    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    limit: int | None = None
    cont: str | None = None
    output: str = "table"


def _list_params(q: ListQuery, default_limit: int) -> dict[str, str | int]:
    params: dict[str, str | int] = {"limit": q.limit or default_limit}
    if q.label_selector:
        params["labelSelector"] = q.label_selector
    if q.field_selector:
        params["fieldSelector"] = q.field_selector
    if q.cont:
        params["continue"] = q.cont
    return params


async def list_objects(
    api: Api, info: ResourceInfo, q: ListQuery, *, default_limit: int, max_chars: int
) -> ToolOutput:
    """A page of objects as a compact table (or YAML), with continue token and size cap."""
    if q.output not in ("table", "yaml"):
        raise InvalidArguments(f"output must be 'table' or 'yaml', got {q.output!r}")
    namespace = q.namespace if info.namespaced else None
    path = info.path(namespace)
    params = _list_params(q, default_limit)
    scope = f" in namespace {namespace!r}" if namespace else ""
    structured: dict[str, Any] = {
        "cluster": api.name,
        "apiVersion": info.api_version,
        "kind": info.kind,
    }
    if namespace:
        structured["namespace"] = namespace
    if q.output == "yaml":
        body = await api.get(path, params=params)
        count = len(body.get("items") or [])
        text = list_to_yaml(body)
    else:
        with_namespace = info.namespaced and not namespace
        if not with_namespace:  # rows' metadata is only needed for the NAMESPACE column
            params["includeObject"] = "None"
        body = await api.get(path, params=params, accept=TABLE_ACCEPT)
        if body.get("kind") != "Table":  # an aggregated API without Table support
            count = len(body.get("items") or [])
            text = list_to_yaml(body)
        else:
            rows = len(body.get("rows") or [])
            table = render_table(
                body, with_namespace=with_namespace, records=rows <= STRUCTURED_ROWS_MAX
            )
            count = table.count
            text = table.text
            if count <= STRUCTURED_ROWS_MAX:
                structured["items"] = table.rows
            else:  # the text alone keeps a big answer lean (half the bytes, less parsing)
                structured["itemsOmitted"] = f"more than {STRUCTURED_ROWS_MAX} rows: see the text"
    meta = body.get("metadata") or {}
    structured["count"] = count
    if meta.get("continue"):
        structured["continue"] = meta["continue"]
    if meta.get("remainingItemCount") is not None:
        structured["remainingItemCount"] = meta["remainingItemCount"]
    if count == 0:
        text = f"No {info.kind} objects found on cluster {api.name!r}{scope}.\n"
    text += continuation_note(body, count)
    text, cut = truncate(text, max_chars, NARROW_HINT)
    if cut:
        structured["truncated"] = True
        structured.pop("items", None)  # the text was cut: do not ship the full rows beside it
    return ToolOutput(text=text, structured=structured)


async def get_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None
) -> dict[str, Any]:
    """One object as parsed JSON (Secrets already redacted by the access layer)."""
    obj: dict[str, Any] = await api.get(info.path(namespace if info.namespaced else None, name))
    return obj


def object_yaml(obj: dict[str, Any], max_chars: int) -> ToolOutput:
    text, _ = truncate(to_yaml(obj), max_chars, "Ask for a narrower object or use resources_list")
    return ToolOutput(text=text)


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


async def apply_object(api: Api, obj: dict[str, Any], default_namespace: str) -> dict[str, Any]:
    """Server-side apply (field manager ``mcp-backend``, conflicts forced) of one object."""
    info = await api.resolve(str(obj["apiVersion"]), str(obj["kind"]))
    meta = obj.setdefault("metadata", {})
    namespace: str | None = None
    if info.namespaced:
        namespace = meta.get("namespace") or default_namespace
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    body = yaml.safe_dump(obj).encode()
    result: dict[str, Any] = await api.call(
        "PATCH",
        info.path(namespace, meta["name"]),
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )
    return result


async def delete_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None, grace: int | None
) -> str:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if grace is not None:
        body["gracePeriodSeconds"] = grace
    ns = namespace if info.namespaced else None
    await api.call("DELETE", info.path(ns, name), body=body)
    where = f" in namespace {ns!r}" if ns else ""
    return f"{info.kind} {name!r}{where} deleted on cluster {api.name!r}.\n"


async def scale_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None, replicas: int | None
) -> ToolOutput:
    ns = namespace if info.namespaced else None
    path = info.path(ns, name) + "/scale"
    try:
        if replicas is None:
            scale = await api.get(path)
        else:
            scale = await api.call(
                "PATCH",
                path,
                body={"spec": {"replicas": replicas}},
                content_type="application/merge-patch+json",
            )
    except NotFound as exc:
        if "scale" in exc.message and info.kind not in exc.message:
            raise
        raise NotFound(
            f"{info.kind} {name!r} not found, or {info.kind} has no scale subresource "
            f"(cluster {api.name!r}): {exc.message}",
            status=404,
        ) from None
    spec = (scale.get("spec") or {}).get("replicas", 0)
    status = (scale.get("status") or {}).get("replicas", 0)
    verb = "scaled to" if replicas is not None else "has"
    text = f"{info.kind} {name!r} {verb} {spec} desired replicas ({status} current).\n"
    return ToolOutput(
        text=text,
        structured={
            "kind": info.kind,
            "name": name,
            "namespace": ns,
            "replicas": spec,
            "currentReplicas": status,
        },
    )


async def read_log(
    api: Api,
    namespace: str,
    name: str,
    *,
    container: str | None,
    previous: bool,
    tail: int | None,
    limit_bytes: int,
    since_seconds: int | None = None,
    since_time: str | None = None,
) -> str:
    params: dict[str, str | int] = {"limitBytes": limit_bytes}
    if container:
        params["container"] = container
    if previous:
        params["previous"] = "true"
    if tail:
        params["tailLines"] = tail
    if since_seconds is not None:
        params["sinceSeconds"] = since_seconds
    if since_time is not None:
        params["sinceTime"] = since_time
    text: str = await api.get(
        POD.path(namespace, name) + "/log",
        params=params,
        text=True,
        accept="text/plain,application/json",
    )
    return text
