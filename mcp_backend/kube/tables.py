"""Server-side Table responses (``meta.k8s.io/v1`` Table), decoded for rendering only.

A list fetched as a Table carries, per row, the printed cells and (for lists across namespaces)
the object's metadata as ``PartialObjectMetadata``, managedFields included: about 90 % of the
bytes of a pod list. Rendering needs only the column definitions, the cells, each row's namespace
and the list metadata, so :func:`decode_table` reads just those with msgspec's typed decoder,
which skips every other field without building it. For a 200-pod Table that is about 0.45 ms
instead of 1.6 ms for a full parse with orjson, and nothing large is left to free afterwards.

The result has the shape of the Table JSON with each row's ``object`` cut down to
``{"metadata": {"namespace": ...}}``. Anything msgspec refuses (a body that is not a Table, NaN,
a BOM, lone surrogates, another encoding, fields of unexpected types) makes :func:`decode_table`
return ``None``, and the caller parses the body in full exactly as before.
"""

from __future__ import annotations

from typing import Any

import msgspec

TABLE_KIND = "Table"


class _ObjectMeta(msgspec.Struct):
    namespace: str | None = None


class _RowObject(msgspec.Struct):
    metadata: _ObjectMeta | None = None


class _Row(msgspec.Struct):
    cells: list[Any] = msgspec.field(default_factory=list)
    object: _RowObject | None = None


class _ListMeta(msgspec.Struct, rename={"continue_": "continue"}):
    continue_: str | None = None
    remainingItemCount: int | None = None


class _Table(msgspec.Struct):
    kind: str = ""
    apiVersion: str = ""
    columnDefinitions: list[dict[str, Any]] = msgspec.field(default_factory=list)
    rows: list[_Row] | None = None
    metadata: _ListMeta | None = None


_DECODER = msgspec.json.Decoder(_Table)


def decode_table(raw: bytes) -> dict[str, Any] | None:
    """The parts of a Table response that rendering uses, or ``None`` when ``raw`` is not a
    Table msgspec can read (then parse it in full)."""
    try:
        table = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if table.kind != TABLE_KIND:
        return None
    body: dict[str, Any] = {
        "kind": table.kind,
        "apiVersion": table.apiVersion,
        "columnDefinitions": table.columnDefinitions,
        "rows": [_row(r) for r in table.rows or ()],
    }
    if table.metadata is not None:
        meta: dict[str, Any] = {}
        if table.metadata.continue_ is not None:
            meta["continue"] = table.metadata.continue_
        if table.metadata.remainingItemCount is not None:
            meta["remainingItemCount"] = table.metadata.remainingItemCount
        body["metadata"] = meta
    return body


def _row(row: _Row) -> dict[str, Any]:
    namespace = row.object.metadata.namespace if row.object and row.object.metadata else None
    if namespace is None:
        return {"cells": row.cells}
    return {"cells": row.cells, "object": {"metadata": {"namespace": namespace}}}
