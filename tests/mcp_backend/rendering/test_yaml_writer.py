"""The direct YAML writer reads back as exactly the data it was given, for any JSON value, and
hands over to PyYAML for what it does not handle."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_backend.rendering import yaml_writer
from mcp_backend.rendering.output import to_yaml

# Strings that YAML would read as something else, or that need care in some style.
TRICKY = [
    "",
    "...",  # found by the property test: a plain "..." at a line start ends the document
    "... x",
    " ",
    "true",
    "False",
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "n",
    "~",
    "null",
    "Null",
    "NULL",
    "1",
    "-1",
    "+1",
    "0755",
    "0x1F",
    "0b101",
    "1_000",
    "12:30",
    "1:20:30",
    "1.5",
    "1e3",
    ".5",
    "1.0e+17",
    ".inf",
    "-.Inf",
    ".nan",
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "<<",
    "=",
    "-",
    "--",
    "---",
    "...",
    "- a",
    "? x",
    ": x",
    "a: b",
    "a:",
    "a #b",
    "#x",
    "&a",
    "*a",
    "!tag",
    "%x",
    "@x",
    "`x",
    "|",
    ">",
    "'q'",
    '"q"',
    "[a]",
    "{a}",
    "a,b",
    "a, b",
    'k:{"name":"x"}',
    "f:metadata",
    "x ",
    " x",
    "a\tb",
    "tab\t",
    "line\nline",
    "trail \nx",
    "\nlead",
    "  indented\nx",
    "x\n",
    "x\n\n",
    "\n",
    "\n\n",
    "a\r\nb",
    "nul\x00",
    "bell\x07",
    "del\x7f",
    "nel\x85x",
    "ls\u2028x",
    "bom\ufeff",
    "sur\ud800",
    "é",
    "日本",
    "emoji 🙂",
    "back\\slash",
    "/",
    "./a",
    "(x)",
    "a=b",
    "$HOME",
    "^x",
    "a;b",
    "<none>",
    "x" * 300,
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.text(),
    st.sampled_from(TRICKY),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(), st.sampled_from(TRICKY)), children, max_size=5),
    ),
    max_leaves=40,
)


@settings(max_examples=1500, deadline=None)
@given(json_values)
def test_reads_back_as_the_same_data(value: Any) -> None:
    try:
        text = yaml_writer.dump(value)
    except yaml_writer.Unsupported:
        assert isinstance(value, str)  # only a top-level multi-line string is handed over
        return
    assert yaml.safe_load(text) == value, text


@pytest.mark.parametrize("value", TRICKY)
def test_each_tricky_string_as_value_key_and_item(value: str) -> None:
    for doc in ({"k": value}, {value: 1}, [value], [{"k": value, "n": [value]}]):
        assert yaml.safe_load(yaml_writer.dump(doc)) == doc


def test_floats_keep_their_value() -> None:
    doc = [1e17, 1e-05, -0.0, 0.1, 1.5e300, float("inf"), float("-inf")]
    assert yaml.safe_load(yaml_writer.dump(doc)) == doc
    (nan,) = yaml.safe_load(yaml_writer.dump([float("nan")]))
    assert math.isnan(nan)


def test_layout_is_kubectl_like_block_yaml() -> None:
    doc = {
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {}},
        "spec": {
            "replicas": 2,
            "containers": [{"name": "main", "args": ["-v", "2"], "env": []}],
            "script": "set -e\necho hi\n",
        },
        "status": {"ready": True, "message": None, "version": "1.10"},
    }
    assert yaml_writer.dump(doc) == (
        "metadata:\n"
        "  name: web\n"
        "  labels:\n"
        "    app: web\n"
        "  annotations: {}\n"
        "spec:\n"
        "  replicas: 2\n"
        "  containers:\n"
        "  - name: main\n"
        "    args:\n"
        '    - "-v"\n'
        '    - "2"\n'
        "    env: []\n"
        "  script: |\n"
        "    set -e\n"
        "    echo hi\n"
        "status:\n"
        "  ready: true\n"
        "  message: null\n"
        '  version: "1.10"\n'
    )


def test_nested_sequences_and_literal_blocks_in_lists() -> None:
    doc = [[1, [2, 3]], "two\nlines", {"a": [[]]}]
    text = yaml_writer.dump(doc)
    assert text == "- - 1\n  - - 2\n    - 3\n- |-\n  two\n  lines\n- a:\n  - []\n"
    assert yaml.safe_load(text) == doc


def test_to_yaml_hands_other_types_to_pyyaml_and_drops_managed_fields() -> None:
    obj = {"metadata": {"name": "x", "managedFields": [{"manager": "m"}]}, "day": date(2024, 1, 2)}
    with pytest.raises(yaml_writer.Unsupported):
        yaml_writer.dump(obj)
    assert yaml.safe_load(to_yaml(obj)) == {"metadata": {"name": "x"}, "day": date(2024, 1, 2)}
