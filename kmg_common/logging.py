"""JSON log lines carrying the request id, with tokens and secrets redacted before output.

One module for the three services (the backend and both gateway plugins).

The redaction runs on the final message *and* on formatted tracebacks, so a bearer token or a
JWT that slips into an exception message or an argument never reaches a log sink.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kmg_request_id", default=None
)
# The W3C trace id of the request being served (its traceparent), tracing on or off.
trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kmg_trace_id", default=None
)

# "Bearer <token>" / "Basic <credentials>", also URL/form-encoded ("Bearer%20...", "Bearer+...");
# "=" anywhere in the credential (base64 padding, or a token that carries one).
_BEARER = re.compile(r"(?i)(\bbasic|bearer)(?:\s+|%20|\+)[A-Za-z0-9\-._~+/=%]+")
# Three base64url segments starting like a JSON header, wherever they start (also glued to a word).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Opaque tokens with a recognisable prefix: OpenShift OAuth access tokens ("sha256~...").
_OPAQUE = re.compile(r"\bsha256~[A-Za-z0-9_\-]+")
# A field name that holds a credential: *token, *secret, *password, *assertion (client_secret,
# subject_token, access_token, client_assertion, ...). "token_type" or "subject_token_type" do not
# end with one of those words, so they stay readable.
_SECRET_NAME = r"\w*?(?:token|secret|password|passwd|assertion)"  # noqa: S105 - a pattern
_SECRET_KEY = re.compile(rf"(?i)^{_SECRET_NAME}$|^(?:authorization|cookie|set-cookie)$")
# name, then its end quote (JSON ", Python repr ', or \" inside an escaped JSON string) and = or :
# (also URL-encoded: %3D, %3A)
# (or "," between two quoted strings: a repr'd ('client_secret', 'x') pair), then the value: a
# whole quoted string (spaces included) or a bare run up to a delimiter.
_SECRET_PARAM = re.compile(
    rf"(?i)\b({_SECRET_NAME})(\\?[\"']?\s*(?:[=:]|%3[ad])\s*|[\"']\s*,\s*(?=[\"']))"
    r"(\\\"(?:[^\\]|\\(?!\"))*(?:\\\"|$)"  # \"value\" (JSON inside a JSON string)
    r"|\"(?:[^\"\\]|\\.)*(?:\"|$)"  # "value" (JSON)
    r"|'(?:[^'\\]|\\.)*(?:'|$)"  # 'value' (Python repr)
    r"|[^\s&\",;}']+)"  # bare value (form field, key=value)
)
REDACTED = "[REDACTED]"

# Attributes of every LogRecord; anything else passed via ``extra=`` is emitted as a field.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
_MAX_DEPTH = 20  # deeper structures in ``extra=`` are logged as one redacted string


def _redact_param(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = '\\"' if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """Replace bearer credentials, JWT-looking strings, opaque tokens and secret fields."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _OPAQUE.sub(REDACTED, text)
    return _SECRET_PARAM.sub(_redact_param, text)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.match(key))


def redact_value(value: Any, _depth: int = 0) -> Any:
    """:func:`redact` applied through dicts, lists, tuples and sets (values of secret-named keys
    are replaced whole); other non-JSON objects become their redacted ``str``."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth >= _MAX_DEPTH:
        return redact(str(value))
    if isinstance(value, dict):
        return {
            redact(str(k)): REDACTED if _is_secret_key(k) else redact_value(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple) and len(value) == 2 and _is_secret_key(value[0]):
        return [value[0], REDACTED]  # a (name, value) form pair
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, _depth + 1) for v in value]
    return redact(str(value))


class RedactionFilter(logging.Filter):
    """Render the message once, redact it, and drop the args so nothing unredacted survives."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not crash logging
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS:
                record.__dict__[key] = redact_value(value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, service, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        trace_id = trace_id_var.get()
        if trace_id:
            entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = redact_value(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route the root logger to JSON lines on ``stream`` (stderr), redaction always on."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_kmg_handler", False):
            root.removeHandler(old)
    handler._kmg_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log repeats what our metrics middleware records; keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
