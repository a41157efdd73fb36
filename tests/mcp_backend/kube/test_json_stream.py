"""The list splitter hands out exactly the elements and other members a full JSON parse finds,
however the body is cut into chunks, and refuses what is not a JSON object."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_backend.kube.json_stream import ArrayStream

# Keys and strings with the characters the scanner must not be fooled by.
TEXT = st.text(alphabet=st.sampled_from(list('ab"\\{}[],: \n\t\u00e9\u2028/')), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def _split(raw: bytes, sizes: list[int], keys: tuple[str, ...] = ("items",)) -> ArrayStream:
    stream = ArrayStream(keys, orjson.loads)
    elements: list[Any] = []
    start, i = 0, 0
    while start < len(raw):
        size = sizes[i % len(sizes)] if sizes else len(raw)
        elements += [orjson.loads(e) for e in stream.feed(raw[start : start + size])]
        start += size
        i += 1
    stream.finish()
    stream.elements = elements  # type: ignore[attr-defined]
    return stream


@settings(max_examples=300, deadline=None)
@given(
    head=st.dictionaries(TEXT.filter(lambda k: k != "items"), VALUES, max_size=4),
    items=st.lists(VALUES, max_size=6),
    tail=st.dictionaries(TEXT.filter(lambda k: k != "items"), VALUES, max_size=2),
    sizes=st.lists(st.integers(1, 9), max_size=5),
    indent=st.sampled_from([None, 1]),
)
def test_elements_and_members_match_a_full_parse(
    head: dict[str, Any],
    items: list[Any],
    tail: dict[str, Any],
    sizes: list[int],
    indent: int | None,
) -> None:
    body = {**head, "items": items, **{k: v for k, v in tail.items() if k not in head}}
    raw = json.dumps(body, indent=indent, ensure_ascii=bool(indent)).encode()
    stream = _split(raw, sizes)
    assert stream.elements == items  # type: ignore[attr-defined]
    assert stream.head == {k: v for k, v in body.items() if k != "items"}
    assert stream.array_key == "items"
    assert stream.done


def test_a_table_splits_its_rows_and_an_object_without_the_array_is_all_head() -> None:
    table = {"kind": "Table", "columnDefinitions": [{"name": "Name"}], "rows": [{"cells": ["a"]}]}
    stream = _split(json.dumps(table).encode(), [3], ("rows", "items"))
    assert stream.array_key == "rows"
    assert stream.elements == [{"cells": ["a"]}]  # type: ignore[attr-defined]
    plain = {"kind": "Status", "items": {"not": "an array"}}
    stream = _split(json.dumps(plain).encode(), [2])
    assert stream.array_key is None
    assert stream.head == plain


def test_elements_come_out_as_soon_as_they_end() -> None:
    stream = ArrayStream(("items",), orjson.loads)
    assert stream.feed(b'{"metadata": {"continue": "t"}, "items": [{"a": 1}, {"b"') == [b'{"a": 1}']
    assert stream.head == {"metadata": {"continue": "t"}}
    assert stream.feed(b": 2}") == [b'{"b": 2}']
    assert not stream.done


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'{"items": [1,]}',
        b'{"a": 1,}',
        b'{"items": [1}',
        b'{"items": [1]',
        b'{"a": 1} trailing',
        b'{"a" 1}',
        b'{"items": [{]]}',
    ],
)
def test_what_is_not_a_json_object_is_refused(raw: bytes) -> None:
    """By the splitter, or (an element it delimits but cannot be JSON) by the element's parser."""
    stream = ArrayStream(("items",), orjson.loads)
    with pytest.raises(ValueError, match=r"JSON|unexpected"):  # noqa: PT012 - feed, parser, finish
        for element in stream.feed(raw):
            orjson.loads(element)
        stream.finish()
