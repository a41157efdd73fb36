"""Rendering of tool output: compact tables (like kubectl), YAML, and the size cap. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from mcp_backend.rendering import yaml_writer

DROPPED_METADATA = ("managedFields",)


@dataclass
class ToolOutput:
    """What a tool returns: text for the model, optional structured content, error flag."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def strip_noise(obj: Any) -> Any:
    """Remove ``metadata.managedFields`` from an object, list or Table, in place."""
    if isinstance(obj, list):
        for item in obj:
            strip_noise(item)
    elif isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            for key in DROPPED_METADATA:
                meta.pop(key, None)
        for key in ("items", "rows"):
            if isinstance(obj.get(key), list):
                strip_noise(obj[key])
        if isinstance(obj.get("object"), dict):
            strip_noise(obj["object"])
    return obj


_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(obj: Any) -> str:
    """YAML of an object or list, without managedFields, keys in API order."""
    data = strip_noise(obj)
    try:
        return yaml_writer.dump(data)
    except yaml_writer.Unsupported:  # not plain JSON data: let PyYAML decide everything
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def list_to_yaml(body: dict[str, Any]) -> str:
    """YAML of a list response: the items only (with their kind restored), as a YAML list."""
    items = [list_item(body, item) for item in body.get("items") or []]
    return to_yaml(items) if items else "[]\n"


def list_item(head: dict[str, Any], item: Any) -> Any:
    """An item of a list response with the kind and apiVersion the list's items share (the API
    server leaves them out of each item), taken from the list's ``head`` (kind, apiVersion)."""
    kind = str(head.get("kind", "")).removesuffix("List")
    if kind and isinstance(item, dict) and "kind" not in item:
        return {"apiVersion": head.get("apiVersion"), "kind": kind, **item}
    return item


@dataclass
class Table:
    """A rendered server-side Table: the text, the row count, and (when asked for) each row's
    priority-0 cells by column name."""

    text: str
    count: int
    rows: list[dict[str, Any]]
    columns: list[str]


def render_table(table: dict[str, Any], *, with_namespace: bool, records: bool = True) -> Table:
    """kubectl-like aligned text of a ``meta.k8s.io/v1 Table`` (priority-0 columns only);
    ``records=False`` skips the per-row dicts (when only the text is shipped)."""
    defs = table.get("columnDefinitions") or []
    keep = [i for i, c in enumerate(defs) if int(c.get("priority", 0)) == 0]
    names = [str(defs[i].get("name", i)) for i in keep]
    width = len(defs)
    rows_out: list[dict[str, Any]] = []
    grid: list[list[str]] = []
    for row in table.get("rows") or []:
        cells = row.get("cells") or []
        if len(cells) < width:
            cells = [*cells, *([None] * (width - len(cells)))]
        picked = [cells[i] for i in keep]
        values = [v if type(v) is str and "\n" not in v else _cell(v) for v in picked]
        obj = row.get("object")
        namespace = (obj.get("metadata") or {}).get("namespace") if obj else None
        if with_namespace:
            values.insert(0, namespace or "")
        grid.append(values)
        if records:
            record = dict(zip(names, picked, strict=True))
            if namespace:
                record["Namespace"] = namespace
            rows_out.append(record)
    header = (["NAMESPACE"] if with_namespace else []) + [n.upper() for n in names]
    text = align([header, *grid]) if grid else ""
    return Table(text=text, count=len(grid), rows=rows_out, columns=header)


def _cell(value: Any) -> str:
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "<none>"
    return str(value).replace("\n", " ")


def align(grid: list[list[str]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl."""
    widths = [max(map(len, column)) for column in zip(*grid, strict=False)]
    if not widths:  # a Table without printable columns (possible from an aggregated API)
        return ""
    template = "   ".join([*(f"{{:<{w}}}" for w in widths[:-1]), "{}"])
    return "\n".join(template.format(*row).rstrip() for row in grid) + "\n"


def continuation_note(body: dict[str, Any], shown: int) -> str:
    """The 'more items' note of a paginated list, or ''."""
    meta = body.get("metadata") or {}
    token = meta.get("continue")
    if not token:
        return ""
    remaining = meta.get("remainingItemCount")
    more = f"{remaining} more items" if remaining is not None else "more items"
    return (
        f'\n[{shown} items shown; {more} on the server. Call again with continue="{token}" '
        "(same other arguments) for the next page.]\n"
    )


def truncate(text: str, max_chars: int, hint: str) -> tuple[str, bool]:
    """Cut ``text`` at a line boundary under ``max_chars`` and say how to narrow the query."""
    if len(text) <= max_chars:
        return text, False
    cut = text.rfind("\n", 0, max_chars)
    if cut < max_chars // 2:
        cut = max_chars
    kept = text[:cut]
    shown_lines = kept.count("\n")
    total_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    note = (
        f"\n[output truncated: {len(text)} characters ({total_lines} lines) exceed the "
        f"{max_chars}-character cap; {shown_lines} lines shown. {hint}]\n"
    )
    return kept.rstrip("\n") + "\n" + note, True
