"""``pods_log``'s filters: ``since``, ``sinceTime`` and ``grep``
(:mod:`mcp_backend.operations.pod_logs`)."""

from __future__ import annotations

from typing import Any

from mcp_backend.errors import InvalidArguments
from mcp_backend.kube.clusters import Api
from mcp_backend.operations.pod_logs import (
    LineFilter,
    LogQuery,
    grep_log,
    since_seconds,
    since_time,
)
from mcp_backend.rendering.output import ToolOutput
from mcp_backend.tools.base import ToolContext, prop

NOTES_ROOM = 2_000  # characters of the answer kept for the summary after the lines

LOG_FILTER_PROPS: dict[str, dict[str, Any]] = {
    "since": prop(
        "string",
        "Only lines newer than this duration, e.g. '30s', '15m', '1h30m', '2d' (Optional)",
    ),
    "sinceTime": prop(
        "string",
        "Only lines at or after this RFC 3339 time, e.g. '2025-05-01T12:00:00Z' (Optional; "
        "not with since)",
    ),
    "grep": prop(
        "string",
        "Only lines containing this text (case-sensitive), or matching it as a regular "
        "expression when grepRegex is true; filtered as the log is read, the newest 'tail' "
        "matches returned (Optional)",
    ),
    "grepRegex": prop(
        "boolean",
        "Treat grep as an RE2 regular expression (e.g. '(?i)error|timeout'; no backreferences "
        "or lookaround) (Optional, default: false)",
        default=False,
    ),
}


def log_query(ctx: ToolContext, namespace: str, name: str) -> LogQuery:
    since, moment = ctx.text("since"), ctx.text("sinceTime")
    if since is not None and moment is not None:
        raise InvalidArguments("give since or sinceTime, not both")
    return LogQuery(
        namespace=namespace,
        name=name,
        container=ctx.text("container"),
        previous=ctx.flag("previous", default=False),
        since_seconds=since_seconds(since) if since is not None else None,
        since_time=since_time(moment) if moment is not None else None,
    )


def window_text(query: LogQuery) -> str:
    if query.since_seconds is not None:
        return f" in the last {query.since_seconds}s"
    if query.since_time is not None:
        return f" since {query.since_time}"
    return ""


def line_filter(ctx: ToolContext) -> LineFilter | None:
    """The ``grep`` / ``grepRegex`` arguments as a filter (None: no grep)."""
    if ctx.text("grep") is None:
        return None
    return LineFilter(ctx.req("grep"), regex=ctx.flag("grepRegex", default=False))


async def grep_pod_log(
    ctx: ToolContext, api: Api, query: LogQuery, flt: LineFilter, tail: int | None
) -> ToolOutput:
    settings = ctx.settings
    result = await grep_log(
        api,
        query,
        flt,
        keep=tail or None,
        budget=max(settings.output_max_chars - NOTES_ROOM, 1),
        max_lines=settings.log_grep_max_lines,
        max_bytes=settings.log_grep_max_bytes,
    )
    how = "matching the regular expression" if flt.regex else "containing"
    where = f"pod {query.namespace}/{query.name}" + (
        f" container {query.container}" if query.container else ""
    )
    if result.matches == 0:
        text = (
            f"(no line of the log of {where}{window_text(query)} {how} {flt.pattern!r}; "
            f"{result.scanned_lines} lines searched)\n"
        )
    else:
        text = "\n".join(result.lines) + "\n"
        shown = len(result.lines)
        summary = f"[{shown} of {result.matches} lines {how} {flt.pattern!r}"
        summary += f" among {result.scanned_lines} lines searched{window_text(query)}"
        if result.dropped:
            summary += "; the newest shown: use a larger tail, since or a narrower grep for more"
        text += summary + "]\n"
    text += "".join(f"[{note}]\n" for note in result.notes)
    structured = {
        "matches": result.matches,
        "shown": len(result.lines),
        "scannedLines": result.scanned_lines,
        "scannedBytes": result.scanned_bytes,
    }
    return ToolOutput(text=text, structured=structured)
