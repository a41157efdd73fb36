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

_BEARER = re.compile(r"(?i)(bearer(?:\s+|%20|\+))[A-Za-z0-9._~+/=%-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_SECRET_KEY = re.compile(r"(?i)(?:token|secret|password)$")
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
    """A log field without secrets: numbers and booleans as they are, mappings and sequences
    with each member scrubbed, anything else as scrubbed text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {
            scrub(str(k)): "<redacted>" if _SECRET_KEY.search(str(k)) else scrub_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return scrub(value if isinstance(value, str) else str(value))


# the extra fields a log record may carry into its line (the audit line of a tool call: audit.py)
FIELDS = (
    "audit",
    "trace_id",
    "user",
    "groups",
    "client",
    "tool",
    "cluster",
    "arguments",
    "outcome",
    "duration_ms",
    "bytes",
    "status",
)


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
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
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
