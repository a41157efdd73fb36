"""A response body parsed exactly as ``json.loads`` parses it, faster where that is safe."""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every digit as "0", everything else as " ": a run of 19 digits then shows as b"0" * 19.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_NINETEEN_DIGITS = b"0" * 19


def loads_json(raw: bytes) -> Any:
    """Parse a response body exactly as ``json.loads`` does, with orjson where that is safe (a
    200-pod Table parses about twice as fast). The standard library decides whenever orjson refuses
    the text (NaN, Infinity, a BOM, lone surrogates, other encodings), and when a run of 19+
    digits could be an integer outside orjson's 64-bit range, which it would turn into a float
    (the scan costs about 1 ns per byte)."""
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)
