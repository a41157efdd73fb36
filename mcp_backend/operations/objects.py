"""Generic object operations on any served kind: list, get, apply, delete, scale.

Domain layer between the thin tool handlers and the API client; returns :class:`ToolOutput`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_backend.errors import InvalidArguments, NotFound, ToolFailure
from mcp_backend.kube.client import TABLE_ACCEPT, loads_json
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import POD, ResourceInfo
from mcp_backend.rendering.output import (
    Table,
    ToolOutput,
    continuation_note,
    list_item,
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


@dataclass(frozen=True)
class ListBounds:
    """What one list call may ask for and show: the page size when ``limit`` is omitted, the
    largest page, the output cap (characters)."""

    default_limit: int
    max_limit: int
    max_chars: int


def _list_params(q: ListQuery, limit: int) -> dict[str, str | int]:
    params: dict[str, str | int] = {"limit": limit}
    if q.label_selector:
        params["labelSelector"] = q.label_selector
    if q.field_selector:
        params["fieldSelector"] = q.field_selector
    if q.cont:
        params["continue"] = q.cont
    return params


@dataclass
class _Page:
    """What a list call shows: text, items shown, the list's other members, and why reading
    stopped before the end of the page ('' when it did not)."""

    text: str
    count: int
    head: dict[str, Any]
    stopped: str = ""


class _YamlItems:
    """YAML of list items, one by one, until the next one would pass the output cap."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.size = 0
        self.full = False
        self.oversized_first = ""  # the first item, when it alone passes the cap

    def add(self, head: dict[str, Any], item: Any) -> bool:
        """Render ``item``; False (nothing added) once the cap is reached."""
        text = to_yaml([list_item(head, item)])
        if self.size + len(text) > self.max_chars:
            self.full = True
            if not self.parts:
                self.oversized_first = text
            return False
        self.parts.append(text)
        self.size += len(text)
        return True

    def page(self, head: dict[str, Any], stopped: str) -> _Page:
        if self.oversized_first:
            text, _ = truncate(self.oversized_first, self.max_chars, _ONE_OBJECT_HINT)
            return _Page(text, 0, head, "first")
        return _Page("".join(self.parts), len(self.parts), head, stopped)


_ONE_OBJECT_HINT = (
    "The first object alone is larger than the cap (its get tool shows it, capped too). "
    + NARROW_HINT
)


async def _yaml_page(api: Api, path: str, params: dict[str, str | int], max_chars: int) -> _Page:
    """Full objects as YAML, read as they arrive: reading stops (and the rest of the answer is
    dropped unread) once the YAML reaches the output cap or ``max_response_bytes`` were read."""
    rendered = _YamlItems(max_chars)
    async with api.stream_list(
        path, params=params, accept="application/json", array_keys=("items",), decode=loads_json
    ) as stream:
        while not rendered.full and (batch := await stream.read()) is not None:
            for item in batch:
                if not rendered.add(stream.head, item):
                    break
        stopped = "cap" if rendered.full else ("size" if stream.over_size else "")
        return rendered.page(stream.head, stopped)


async def _table_page(
    api: Api, path: str, params: dict[str, str | int], with_namespace: bool, max_chars: int
) -> tuple[_Page, Table | None]:
    """The server-side Table of a page, rendered like kubectl (read whole: its rows are small,
    the page size is bounded by max_list_limit and the answer by max_response_bytes)."""
    if not with_namespace:  # rows' metadata is only needed for the NAMESPACE column
        params["includeObject"] = "None"
    body = await api.get(path, params=params, accept=TABLE_ACCEPT)
    if body.get("kind") != "Table":  # an aggregated API without Table support
        rendered = _YamlItems(max_chars)
        for item in body.get("items") or []:
            if not rendered.add(body, item):
                break
        return rendered.page(body, "cap" if rendered.full else ""), None
    rows = len(body.get("rows") or [])
    table = render_table(body, with_namespace=with_namespace, records=rows <= STRUCTURED_ROWS_MAX)
    return _Page(table.text, table.count, body), table


async def list_objects(
    api: Api, info: ResourceInfo, q: ListQuery, bounds: ListBounds
) -> ToolOutput:
    """A page of objects as a compact table (or YAML), with continue token and size cap."""
    if q.output not in ("table", "yaml"):
        raise InvalidArguments(f"output must be 'table' or 'yaml', got {q.output!r}")
    namespace = q.namespace if info.namespaced else None
    path = info.path(namespace)
    limit = min(q.limit or bounds.default_limit, bounds.max_limit)
    params = _list_params(q, limit)
    scope = f" in namespace {namespace!r}" if namespace else ""
    structured: dict[str, Any] = {
        "cluster": api.name,
        "apiVersion": info.api_version,
        "kind": info.kind,
    }
    if namespace:
        structured["namespace"] = namespace
    table: Table | None = None
    if q.output == "yaml":
        page = await _yaml_page(api, path, params, bounds.max_chars)
    else:
        with_namespace = info.namespaced and not namespace
        page, table = await _table_page(api, path, params, with_namespace, bounds.max_chars)
    structured["count"] = page.count
    text = page.text
    if page.count == 0 and not page.stopped:
        text = f"No {info.kind} objects found on cluster {api.name!r}{scope}.\n"
    if q.limit is not None and q.limit > limit:
        structured["limit"] = limit
        text = (
            f"[limit {q.limit} is above this server's largest page (max_list_limit): a page of "
            f"up to {limit} items was asked for]\n" + text
        )
    if page.stopped:
        structured["truncated"] = True
        return ToolOutput(text=text + _stop_note(page, q, bounds), structured=structured)
    meta = page.head.get("metadata") or {}
    if meta.get("continue"):
        structured["continue"] = meta["continue"]
    if meta.get("remainingItemCount") is not None:
        structured["remainingItemCount"] = meta["remainingItemCount"]
    if table is not None:
        if page.count <= STRUCTURED_ROWS_MAX:
            structured["items"] = table.rows
        else:  # the text alone keeps a big answer lean (half the bytes, less parsing)
            structured["itemsOmitted"] = f"more than {STRUCTURED_ROWS_MAX} rows: see the text"
    text += continuation_note(page.head, page.count)
    text, cut = truncate(text, bounds.max_chars, NARROW_HINT)
    if cut:
        structured["truncated"] = True
        structured.pop("items", None)  # the text was cut: do not ship the full rows beside it
    return ToolOutput(text=text, structured=structured)


def _stop_note(page: _Page, q: ListQuery, bounds: ListBounds) -> str:
    """Why a YAML page shows only its first items, and how to page through without gaps."""
    if page.stopped == "first":
        return ""  # truncate() said it
    same = "same other arguments, continue included" if q.cont else "same other arguments"
    if page.stopped == "size":
        why = "the API server's answer passed max_response_bytes, the most this server reads"
    else:
        why = f"the YAML reached the {bounds.max_chars}-character output cap"
    limit = max(page.count, 1)
    return (
        f"\n[{page.count} items shown: {why}, so reading stopped there and no continue token "
        f"is given (it would skip the rest of this page). Call again with limit={limit} "
        f"({same}) and follow the continue token of each answer to read every item; or "
        f"narrow with namespace, labelSelector or fieldSelector.]\n"
    )


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
