"""JSON log lines carrying the request id of the MCP request being served."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The W3C trace id of the tool call being served ("" outside one, or when it came without one).
trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")

_BEARER = re.compile(r"(?i)(bearer(?:\s+|%20|\+))[A-Za-z0-9._~+/=%-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_OPAQUE = re.compile(r"(sha256~)[A-Za-z0-9_-]+")  # OpenShift-style opaque tokens
# `token=x`, `"access_token": "x"`, `'client_secret': 'x'`, `token%3Dx`, JSON-in-JSON `\"token\"`:
# any key ending in token, secret or password, then `=` or `:` (maybe URL-encoded), then a value.
_KEY_VALUE = re.compile(
    r"""(?i)(?<![A-Za-z0-9_-])[A-Za-z0-9_-]*(?:token|secret|password)\\?["']?\s*"""
    r"""(?:[:=]|%3[ad])\s*(\\?"[^"]*"|\\?'[^']*'|[^\s,;&"'}\]\\]+)"""
)


def _redact_value(match: re.Match[str]) -> str:
    value = match.group(1)
    start = match.start(1) - match.start(0)
    quote = value[:2] if value.startswith("\\") else value[:1]
    if quote.endswith(("'", '"')):
        return f"{match.group(0)[:start]}{quote}<redacted>{quote}"
    return f"{match.group(0)[:start]}<redacted>"


def scrub(text: str) -> str:
    """Remove bearer tokens, JWTs, opaque ``sha256~`` tokens and ``token=...`` /
    ``"client_secret": "..."`` style key-values from a log message."""
    text = _BEARER.sub(r"\1<redacted>", text)
    text = _OPAQUE.sub(r"\1<redacted>", text)
    text = _JWT.sub("<redacted-jwt>", text)
    return _KEY_VALUE.sub(_redact_value, text)


def scrub_value(value: Any) -> Any:
    """A log field without secrets: numbers and booleans as they are, anything else serialised
    to text and scrubbed."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if not isinstance(value, str):
        value = json.dumps(value, default=str, separators=(",", ":"))
    return scrub(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        current_trace = trace_id.get()
        if current_trace:
            out["trace_id"] = current_trace
        for key in ("tool", "cluster", "outcome", "duration_ms", "status"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = scrub_value(value)
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):  # mcp_backend.audit: arguments come elided and scrubbed
            for key, value in audit.items():
                if key == "arguments":
                    out[key] = value
                elif isinstance(value, list):
                    out[key] = [scrub_value(v) for v in value]
                else:
                    out[key] = scrub_value(value)
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, separators=(",", ":"))


def configure(level: str) -> None:
    """Route the root logger to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
