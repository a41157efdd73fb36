"""Pod log filters: ``since`` / ``sinceTime`` (passed to the kubelet, which skips older lines)
and ``grep``, a plain substring or an RE2 regular expression (linear time, bounded memory: no
pattern can make matching slow) applied line by line while the log streams in. Only matching
lines are kept, at most ``tail`` of them (the newest) and never more than a byte budget, so
scanning a large log holds a few chunks and the lines to show, never the log.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from mcp_backend.errors import InvalidArguments
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import POD

MAX_PATTERN_CHARS = 1_000
MAX_LINE_BYTES = 64 * 1024  # a longer line is matched (and shown) in pieces of this size
READ_CHUNK = 64 * 1024
RE2_MAX_MEM = 8 * 1024 * 1024  # RE2's bound on a compiled pattern's memory
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_SECONDS = (86_400, 3_600, 60, 1)
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def since_seconds(text: str) -> int:
    """``since`` as seconds: a duration such as ``90s``, ``15m``, ``1h30m``, ``2d`` or a plain
    number of seconds."""
    value = text.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION.fullmatch(value)
        if match is None or not any(match.groups()):
            raise InvalidArguments(
                f"since {text!r} is not a duration: use e.g. '30s', '15m', '1h30m' or '2d'"
            )
        seconds = sum(
            int(n or 0) * unit for n, unit in zip(match.groups(), _UNIT_SECONDS, strict=True)
        )
    if seconds < 1:
        raise InvalidArguments(f"since {text!r} must be at least one second")
    return seconds


def since_time(text: str) -> str:
    """``sinceTime`` checked and written as the API server reads it (RFC 3339, UTC)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise InvalidArguments(
            f"sinceTime {text!r} is not an RFC 3339 time: use e.g. '2025-05-01T12:00:00Z'"
        )
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}{(fraction or '')[:7]}{zone}")
    except ValueError:
        raise InvalidArguments(f"sinceTime {text!r} is not a valid date and time") from None
    utc = moment.astimezone(dt.UTC)
    return (
        utc.strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{utc.microsecond:06d}" if utc.microsecond else "")
        + "Z"
    )


class LineFilter:
    """``grep``: a substring, or (``regex``) an RE2 pattern searched anywhere in the line."""

    def __init__(self, pattern: str, *, regex: bool) -> None:
        if not pattern:
            raise InvalidArguments("grep must not be empty")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidArguments(f"grep is longer than {MAX_PATTERN_CHARS} characters")
        self.pattern = pattern
        self.regex = regex
        self._needle = pattern.encode()
        self._compiled: Any = None
        if regex:
            options = re2.Options()
            options.log_errors = False
            options.max_mem = RE2_MAX_MEM
            try:
                self._compiled = re2.compile(self._needle, options=options)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode(errors="replace")
                raise InvalidArguments(
                    f"grep {pattern!r} is not a regular expression this server accepts (RE2 "
                    f"syntax: no backreferences or lookaround): {reason}"
                ) from None

    def matches(self, line: bytes) -> bool:
        if self._compiled is not None:
            return self._compiled.search(line) is not None
        return self._needle in line


class ByteStream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


@dataclass
class GrepResult:
    """What a scan found: the newest matching lines kept, and how much was read."""

    lines: list[str]
    matches: int = 0
    scanned_lines: int = 0
    scanned_bytes: int = 0
    dropped: int = 0  # matching lines not kept (older than the kept ones)
    notes: list[str] = field(default_factory=list)


class _Keeper:
    """The newest matching lines, at most ``count`` and ``budget`` bytes of them."""

    def __init__(self, count: int | None, budget: int) -> None:
        self.lines: deque[bytes] = deque()
        self.count = count
        self.budget = budget
        self.size = 0
        self.dropped = 0

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while self.lines and (
            (self.count is not None and len(self.lines) > self.count) or self.size > self.budget
        ):
            self.size -= len(self.lines.popleft()) + 1
            self.dropped += 1


async def grep_stream(
    stream: ByteStream, flt: LineFilter, *, keep: int | None, budget: int
) -> GrepResult:
    """Read ``stream`` to its end, testing each line as it arrives; keep the newest ``keep``
    matching lines (all when None) within ``budget`` bytes."""
    keeper = _Keeper(keep, budget)
    result = GrepResult(lines=[])
    pending = b""

    def scan(line: bytes) -> None:
        result.scanned_lines += 1
        if flt.matches(line):
            result.matches += 1
            keeper.add(line)

    while chunk := await stream.read(READ_CHUNK):
        result.scanned_bytes += len(chunk)
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            for piece in _pieces(line):
                scan(piece)
        while len(pending) > MAX_LINE_BYTES:  # a line still growing: match it in pieces
            scan(pending[:MAX_LINE_BYTES])
            pending = pending[MAX_LINE_BYTES:]
    if pending:
        scan(pending)
    result.lines = [line.decode("utf-8", errors="replace") for line in keeper.lines]
    result.dropped = keeper.dropped
    return result


def _pieces(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE_BYTES:
        return [line]
    return [line[i : i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)]


@dataclass(frozen=True)
class LogQuery:
    """Which log of which pod, and from when (the kubelet's own options)."""

    namespace: str
    name: str
    container: str | None = None
    previous: bool = False
    since_seconds: int | None = None
    since_time: str | None = None

    def params(self) -> dict[str, str | int]:
        params: dict[str, str | int] = {}
        if self.container:
            params["container"] = self.container
        if self.previous:
            params["previous"] = "true"
        if self.since_seconds is not None:
            params["sinceSeconds"] = self.since_seconds
        if self.since_time is not None:
            params["sinceTime"] = self.since_time
        return params


async def grep_log(
    api: Api,
    query: LogQuery,
    flt: LineFilter,
    *,
    keep: int | None,
    budget: int,
    max_lines: int,
    max_bytes: int,
) -> GrepResult:
    """The log's last ``max_lines`` lines (at most ``max_bytes``), filtered as they stream in."""
    params = {**query.params(), "tailLines": max_lines, "limitBytes": max_bytes}
    path = POD.path(query.namespace, query.name) + "/log"
    async with api.stream_text(path, params=params) as stream:
        result = await grep_stream(stream, flt, keep=keep, budget=budget)
    if result.scanned_lines >= max_lines:
        result.notes.append(
            f"only the last {max_lines} lines of the log were searched (setting "
            "log_grep_max_lines): narrow with since or sinceTime to search another window"
        )
    if result.scanned_bytes >= max_bytes:
        result.notes.append(
            f"the search stopped after {max_bytes} bytes (setting log_grep_max_bytes): the "
            "newest lines may not have been searched; narrow with since or sinceTime"
        )
    return result
