"""Lists of any served kind, one page at a time: as a compact table (the API server's Table
rendering) or as YAML read piece by piece, within the page size and the output cap, with the
note that says how to get the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_backend.errors import InvalidArguments
from mcp_backend.kube.client import TABLE_ACCEPT
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import ResourceInfo
from mcp_backend.kube.json_body import loads_json
from mcp_backend.rendering.output import (
    Table,
    ToolOutput,
    continuation_note,
    list_item,
    render_table,
    to_yaml,
    truncate,
)

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
