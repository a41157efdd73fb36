"""Output rendering (pure): tables, YAML without managedFields, pagination note, truncation."""

from __future__ import annotations

import yaml

from mcp_backend.rendering.output import (
    continuation_note,
    list_to_yaml,
    render_table,
    to_yaml,
    truncate,
)

TABLE = {
    "kind": "Table",
    "columnDefinitions": [
        {"name": "Name", "type": "string", "priority": 0},
        {"name": "Status", "type": "string", "priority": 0},
        {"name": "IP", "type": "string", "priority": 1},
    ],
    "rows": [
        {"cells": ["web-1", "Running", "10.0.0.1"], "object": {"metadata": {"namespace": "a"}}},
        {"cells": ["database-0", None, "10.0.0.2"], "object": {"metadata": {"namespace": "bb"}}},
        {"cells": ["multi", "line\ntext", "x"], "object": {"metadata": {"namespace": "c"}}},
    ],
}


def test_table_keeps_priority_zero_columns_and_aligns() -> None:
    table = render_table(TABLE, with_namespace=True)
    assert table.text.splitlines() == [
        "NAMESPACE   NAME         STATUS",
        "a           web-1        Running",
        "bb          database-0   <none>",
        "c           multi        line text",
    ]
    assert table.rows[0] == {"Name": "web-1", "Status": "Running", "Namespace": "a"}
    assert render_table(TABLE, with_namespace=False).text.startswith("NAME ")


def test_yaml_drops_managed_fields_and_restores_item_kind() -> None:
    body = {
        "kind": "PodList",
        "apiVersion": "v1",
        "items": [{"metadata": {"name": "p", "managedFields": [{"manager": "x"}]}, "spec": {}}],
    }
    items = yaml.safe_load(list_to_yaml(body))
    assert items == [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}]
    assert "managedFields" not in to_yaml({"metadata": {"managedFields": [], "name": "x"}})
    assert "|" in to_yaml({"script": "line1\nline2\n"})  # multi-line strings stay readable


def test_continuation_note() -> None:
    body = {"metadata": {"continue": "abc", "remainingItemCount": 7}}
    note = continuation_note(body, 3)
    assert 'continue="abc"' in note
    assert "7 more items" in note
    assert continuation_note({"metadata": {}}, 3) == ""


def test_truncate_cuts_on_a_line_and_explains() -> None:
    text = "".join(f"line {i:04d}\n" for i in range(1000))
    cut, truncated = truncate(text, 1000, "Narrow it.")
    assert truncated
    assert len(cut) < 1200
    body, note = cut.split("\n[output truncated: ")
    assert all(line.startswith("line ") for line in body.splitlines())
    assert "Narrow it." in note
    assert "1000 lines" in note
    same, truncated = truncate("short\n", 1000, "x")
    assert same == "short\n"
    assert not truncated
