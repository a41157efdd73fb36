"""The elements of a JSON list response, one by one, as its bytes arrive.

A list answer of the API server is one JSON object: ``{"kind": "ConfigMapList", "apiVersion":
"v1", "metadata": {...}, "items": [{...}, {...}, ...]}`` (a Table has ``rows`` instead of
``items``). Parsing it whole means holding all of it, and the objects built from it, although a
tool shows only as much as fits its output cap. :class:`ArrayStream` is fed the body chunk by
chunk and hands out each element of the array member (``items`` or ``rows``) as soon as its last
byte has arrived, as the raw bytes of that element (parse them with any JSON parser); the other
members (``kind``, ``metadata`` with the ``continue`` token, ...) are parsed into :attr:`head`.
The caller can stop at any element and drop the rest of the body unread.

It finds where values end, nothing more: strings (escapes included) are skipped by one regular
expression each, so the Python-level work per element is one step per bracket and string
outside strings. Whether an element is valid JSON is left to the parser it is given to; a body
that is not an object of members fails with :class:`ValueError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

# The rest of a string after its opening quote: any run of plain bytes or escape pairs. Possessive,
# so a long string costs one linear pass; it stops at the closing quote, at a lone backslash at
# the end of the buffer, or at the end of the buffer.
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_STRUCTURE = re.compile(rb'["{}\[\]]')  # outside strings: what changes the nesting
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_SCALAR_END = re.compile(rb"[ \t\r\n,}\]]")
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN, _CLOSE = frozenset(b"{["), frozenset(b"}]")

# Where the scanner is in the top-level object.
_START, _KEY, _COLON, _VALUE, _AFTER_VALUE = range(5)
_ELEMENT, _AFTER_ELEMENT, _END = range(5, 8)


class ArrayStream:
    """Split the array member named one of ``keys`` of a JSON object into its elements.

    ``feed(chunk)`` returns the elements completed by ``chunk`` (raw bytes each); ``finish()``
    checks the object ended. :attr:`head` holds every other member, parsed with ``loads``;
    :attr:`array_key` names the array member once it has begun (None before, or when there is
    none). Bytes already handed out are dropped, so the memory held is about one element.
    """

    def __init__(self, keys: Collection[str], loads: Callable[[bytes], Any]) -> None:
        self._keys = frozenset(keys)
        self._loads = loads
        self._buf = bytearray()
        self._pos = 0
        self._state = _START
        self._member = ""  # the key of the member whose value is being read
        self._value_start = -1  # where the value (or element) being scanned starts, -1: none
        self._depth = 0
        self._in_string = False
        self._after_comma = False  # a value must follow (a trailing comma is not JSON)
        self.head: dict[str, Any] = {}
        self.array_key: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take the next bytes of the body; the array elements they complete, in order."""
        if self.done:
            if _NOT_SPACE.search(chunk):
                raise ValueError("content after the end of the JSON object")
            return []
        self._buf += chunk
        out: list[bytes] = []
        while self._step(out):
            pass
        if self.done and _NOT_SPACE.search(self._buf, self._pos):
            raise ValueError("content after the end of the JSON object")
        self._compact()
        return out

    def finish(self) -> None:
        """The body has ended: raise :class:`ValueError` unless the object was complete."""
        if not self.done:
            raise ValueError("the JSON object ends early")

    # -- the scanner ---------------------------------------------------------------------------

    def _compact(self) -> None:
        keep = self._value_start if self._value_start >= 0 else self._pos
        if keep > 0:
            del self._buf[:keep]
            self._pos -= keep
            if self._value_start >= 0:
                self._value_start = 0

    def _skip_space(self) -> int | None:
        """The next non-blank byte (position left on it), or None when the buffer ends first."""
        found = _NOT_SPACE.search(self._buf, self._pos)
        if found is None:
            self._pos = len(self._buf)
            return None
        self._pos = found.start()
        return self._buf[self._pos]

    def _expect(self, allowed: bytes) -> int | None:
        byte = self._skip_space()
        if byte is None:
            return None
        if byte not in allowed:
            raise ValueError(
                f"unexpected {chr(byte)!r} in the JSON object (expected one of {allowed.decode()})"
            )
        self._pos += 1
        return byte

    def _step(self, out: list[bytes]) -> bool:
        """Advance one state; False when more bytes are needed (or the object ended)."""
        state = self._state
        if state == _START:
            if self._expect(b"{") is None:
                return False
            self._state = _KEY
        elif state == _KEY:
            return self._read_key()
        elif state == _COLON:
            if self._expect(b":") is None:
                return False
            self._state = _VALUE
        elif state == _VALUE:
            return self._read_member_value()
        elif state == _AFTER_VALUE:
            byte = self._expect(b",}")
            if byte is None:
                return False
            if byte == ord("}"):
                self._state, self.done = _END, True
                return False
            self._state, self._after_comma = _KEY, True
        elif state == _ELEMENT:
            return self._read_element(out)
        elif state == _AFTER_ELEMENT:
            byte = self._expect(b",]")
            if byte is None:
                return False
            if byte == ord(","):
                self._state, self._after_comma = _ELEMENT, True
            else:
                self._state = _AFTER_VALUE
        return True

    def _read_key(self) -> bool:
        if self._value_start < 0:
            byte = self._expect(b'"}')
            if byte is None:
                return False
            if byte == ord("}"):
                if self._after_comma:
                    raise ValueError("a comma before the end of the JSON object")
                self._state, self.done = _END, True
                return False
            self._after_comma = False
            self._value_start = self._pos - 1
            self._in_string = True
            self._depth = 0
        if not self._scan_value():
            return False
        key = self._loads(bytes(self._buf[self._value_start : self._pos]))
        if not isinstance(key, str):
            raise ValueError("a JSON object key is not a string")
        self._member = key
        self._value_start = -1
        self._state = _COLON
        return True

    def _read_member_value(self) -> bool:
        if self._value_start < 0:
            byte = self._skip_space()
            if byte is None:
                return False
            if byte == ord("[") and self._member in self._keys and self.array_key is None:
                self.array_key = self._member
                self._pos += 1
                self._state = _ELEMENT
                return True
            self._start_value()
        if not self._scan_value():
            return False
        self.head[self._member] = self._loads(bytes(self._buf[self._value_start : self._pos]))
        self._value_start = -1
        self._state = _AFTER_VALUE
        return True

    def _read_element(self, out: list[bytes]) -> bool:
        if self._value_start < 0:
            byte = self._skip_space()
            if byte is None:
                return False
            if byte == ord("]"):
                if self._after_comma:
                    raise ValueError("a comma before the end of a JSON array")
                self._pos += 1
                self._state = _AFTER_VALUE
                return True
            self._after_comma = False
            self._start_value()
        if not self._scan_value():
            return False
        out.append(bytes(self._buf[self._value_start : self._pos]))
        self._value_start = -1
        self._state = _AFTER_ELEMENT
        return True

    def _start_value(self) -> None:
        self._value_start = self._pos
        self._depth = 0
        self._in_string = False

    def _scan_value(self) -> bool:
        """Move to the end of the value starting at ``_value_start``; False if it has not
        arrived whole yet (the scan resumes where it stopped)."""
        buf, pos, depth = self._buf, self._pos, self._depth
        end = len(buf)
        if pos == self._value_start and not self._in_string and buf[pos] not in _OPEN:
            if buf[pos] == _QUOTE:
                self._in_string = True
                pos += 1
            else:  # a number, true, false or null: ends at a delimiter
                found = _SCALAR_END.search(buf, pos)
                if found is None:  # rescanned from its start when more arrives (it is short)
                    return False
                self._pos = found.start()
                return True
        while True:
            if self._in_string:
                pos = _STRING_BODY.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
                if pos >= end or buf[pos] == _BACKSLASH:  # ends inside the string
                    self._pos, self._depth = pos, depth
                    return False
                pos += 1  # the closing quote
                self._in_string = False
                if depth == 0:
                    self._pos = pos
                    return True
                continue
            found = _STRUCTURE.search(buf, pos)
            if found is None:
                self._pos, self._depth = end, depth
                return False
            byte = buf[found.start()]
            pos = found.end()
            if byte == _QUOTE:
                self._in_string = True
            elif byte in _OPEN:
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    self._pos, self._depth = pos, 0
                    return True
                if depth < 0:
                    raise ValueError("unbalanced brackets in a JSON value")
