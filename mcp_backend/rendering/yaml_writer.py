"""YAML text of JSON data (what the API server returns), written directly.

PyYAML's dumper spends most of its time deciding, node by node, how each value may be written:
even with libyaml's emitter, representing and resolving run in Python for every scalar. The data
here is only ever JSON (mappings with string keys, lists, strings, numbers, booleans, null), so
:func:`dump` writes block-style YAML itself, in the layout PyYAML produces (two-space indent,
sequences inside mappings not indented, literal blocks for multi-line strings), and decides the
style of each distinct string once (cached). For a Deployment that is several times faster.

A string is written plain only when it is made of a conservative set of characters and PyYAML's
own resolver reads it back as a string (so ``"true"``, ``"1.0"``, ``"~"``, ``"2024-01-01"`` are
quoted); otherwise as a double-quoted scalar with JSON escapes (all valid YAML escapes), or as a
literal block when it spans lines that a literal block can hold exactly. Anything else (another
type, a key too long for an implicit key) raises :class:`Unsupported`, and the caller falls back
to PyYAML. ``yaml.safe_load(dump(x)) == x`` for every JSON value ``x`` (property-tested).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

import yaml

_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN = re.compile(r"[A-Za-z0-9_./(][A-Za-z0-9_./@+=,()~^$<>;: -]*")
# Characters YAML does not allow raw in a double-quoted scalar, or reads as line breaks there.
_ESCAPE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
# Characters that keep a string out of a literal block.
_NOT_LITERAL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]"
)
_MAX_KEY = 1000  # YAML limits implicit keys to 1024 characters


class Unsupported(ValueError):
    """The value is not plain JSON data this writer handles; use PyYAML."""


def dump(obj: Any) -> str:
    """Block-style YAML of a JSON value (a mapping or list at the top, usually)."""
    lines: list[str] = []
    if isinstance(obj, dict) and obj:
        _mapping(obj, 0, lines)
    elif isinstance(obj, list) and obj:
        _sequence(obj, 0, lines)
    else:
        value = _inline(obj)
        if value is None:
            raise Unsupported("a multi-line string at the top level")
        lines.append(value)
    lines.append("")
    return "\n".join(lines)


def _mapping(obj: dict[Any, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in obj.items():
        head = f"{pad}{_key(key)}:"
        if isinstance(value, dict) and value:
            lines.append(head)
            _mapping(value, indent + 2, lines)
        elif isinstance(value, list) and value:
            lines.append(head)
            _sequence(value, indent, lines)
        else:
            _scalar_after(head, value, indent + 2, lines)


def _sequence(items: list[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            start = len(lines)
            _mapping(item, indent + 2, lines)
            lines[start] = f"{pad}- {lines[start][indent + 2 :]}"
        elif isinstance(item, list) and item:
            start = len(lines)
            _sequence(item, indent + 2, lines)
            lines[start] = f"{pad}- {lines[start][indent + 2 :]}"
        else:
            _scalar_after(f"{pad}-", item, indent + 2, lines)


def _scalar_after(head: str, value: Any, indent: int, lines: list[str]) -> None:
    """``head`` followed by a scalar (or empty collection), as a literal block if needed."""
    inline = _inline(value)
    if inline is not None:
        lines.append(f"{head} {inline}")
        return
    indicator, body = _literal(value)
    lines.append(f"{head} |{indicator}")
    pad = " " * indent
    lines.extend(f"{pad}{line}" if line else "" for line in body.split("\n"))


def _inline(value: Any) -> str | None:
    """One-line text of a scalar or empty collection; None for a string written as a block."""
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if value == {} and isinstance(value, dict):
        return "{}"
    if value == [] and isinstance(value, list):
        return "[]"
    raise Unsupported(f"cannot write a {type(value).__name__} as YAML here")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise Unsupported(f"mapping key of type {type(key).__name__}")
    text = _string(key)
    if text is None or len(text) > _MAX_KEY:
        text = _quoted(key)
        if len(text) > _MAX_KEY:
            raise Unsupported("mapping key too long for an implicit YAML key")
    return text


@lru_cache(maxsize=8192)
def _string(value: str) -> str | None:
    """Plain or double-quoted text of a string; None when a literal block should hold it."""
    if "\n" in value:
        return None if _literal_ok(value) else _quoted(value)
    if (
        _PLAIN.fullmatch(value)
        and not value.startswith("...")  # at a line start: the document end marker
        and not value.endswith((" ", ":"))
        and ": " not in value
        and _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR_TAG  # type: ignore[no-untyped-call]
    ):
        return value
    return _quoted(value)


def _quoted(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return _ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _literal_ok(value: str) -> bool:
    """A literal block reproduces ``value`` exactly: printable, no trailing spaces on a line,
    the first content line not indented, at most one final line break."""
    if _NOT_LITERAL.search(value) or value.endswith("\n\n"):
        return False
    lines = value.split("\n")
    if any(line.endswith(" ") for line in lines):
        return False
    first = next((line for line in lines if line), None)
    return first is not None and not first.startswith(" ")


def _literal(value: str) -> tuple[str, str]:
    """Chomping indicator and body of a literal block (``_literal_ok`` holds)."""
    if value.endswith("\n"):
        return "", value[:-1]
    return "-", value


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:  # YAML 1.1 floats need a dot: 1e+17 -> 1.0e+17
        text = f"{mantissa}.0e{exponent}"
    return text
