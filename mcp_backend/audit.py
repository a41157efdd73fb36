"""The audit trail: one JSON line per tool call (logger ``mcp_backend.audit``).

Who (the token's username and groups, read from the token the API server verifies; never the
token), what (cluster, tool, arguments with every value that could hold a secret elided), how it
ended (outcome, duration, bytes returned) and the ids that join it to the other logs: the request
id and the W3C trace id, which the policy decision log and, through the ``User-Agent`` of every
API request (:func:`user_agent`), the API server's audit log carry too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from mcp_backend import __version__
from mcp_backend.log import scrub, trace_id

log = logging.getLogger("mcp_backend.audit")

# Arguments whose values are free-form content that may hold secrets: objects to apply (a Secret
# manifest), helm values, exec commands, the API server's opaque continue token.
_ELIDED_ARGUMENTS = frozenset({"resource", "values", "command", "continue"})
_SECRET_NAME = re.compile(r"(?i)(token|secret|passw|credential|private|api_?key|auth|cert)")
_MAX_VALUE = 256
_BASE_AGENT = f"kube-mcp-gateway/{__version__}"


def user_agent() -> str:
    """The User-Agent of API server requests: names the tool call's trace when there is one, so
    the API server's audit events (``userAgent``) can be joined to the trace and this log."""
    current = trace_id.get()
    return f"{_BASE_AGENT} (trace {current})" if current else _BASE_AGENT


def elide_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as the audit line shows them: short scalars kept (scrubbed), free-form or
    secret-looking ones replaced by a note of their size."""
    shown: dict[str, Any] = {}
    for key, value in arguments.items():
        name = str(key)[:64]
        if name in _ELIDED_ARGUMENTS or _SECRET_NAME.search(name):
            shown[name] = _elided(value)
        elif value is None or isinstance(value, bool | int | float):
            shown[name] = value
        elif isinstance(value, str) and len(value) <= _MAX_VALUE:
            shown[name] = scrub(value)
        else:
            shown[name] = _elided(value)
    return shown


def _elided(value: Any) -> str:
    if isinstance(value, str):
        return f"<elided: {len(value)} chars>"
    if isinstance(value, list | tuple):
        return f"<elided: {len(value)} items>"
    if isinstance(value, dict):
        return f"<elided: {len(value)} keys>"
    return "<elided>"


def groups_of(claims: Mapping[str, Any] | None) -> list[str]:
    """The token's ``groups`` claim (strings only, bounded)."""
    groups = (claims or {}).get("groups")
    if not isinstance(groups, list):
        return []
    return [g[:128] for g in groups if isinstance(g, str)][:50]


def record(
    *,
    user: str | None,
    groups: list[str],
    cluster: str,
    tool: str,
    arguments: Mapping[str, Any],
    outcome: str,
    duration_ms: float,
    bytes_returned: int,
) -> None:
    """Write the audit line of one tool call (time and request id come from the formatter)."""
    log.info(
        "tool call",
        extra={
            "audit": {
                "type": "audit",
                "trace_id": trace_id.get() or None,
                "user": user,
                "groups": groups,
                "cluster": cluster,
                "tool": tool,
                "arguments": elide_arguments(arguments),
                "outcome": outcome,
                "duration_ms": round(duration_ms, 2),
                "bytes": bytes_returned,
            }
        },
    )
