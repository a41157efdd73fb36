"""JSON logs carry the request id and never a token or secret."""

from __future__ import annotations

import io
import json
import logging

import jwt

from gateway_plugins.common.logging import configure_logging, redact, request_id_var
from tests.gateway_plugins.common.issuer import new_rsa

TOKEN = jwt.encode({"sub": "alice", "exp": 9999999999}, new_rsa(), algorithm="RS256")


def _capture() -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    configure_logging("demo", "debug", stream=stream)
    return stream, logging.getLogger("tests.demo")


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_redact_covers_bearer_jwt_and_form_fields() -> None:
    text = redact(
        f"authorization: Bearer {TOKEN} raw={TOKEN} "
        "body=grant_type=x&subject_token=abc.def&client_secret=hunter2 "
        '{"access_token": "opaque-123"} Basic dXNlcjpwYXNz'
    )
    for secret in (TOKEN, "abc.def", "hunter2", "opaque-123", "dXNlcjpwYXNz"):
        assert secret not in text
    assert "grant_type=x" in text


def test_log_line_is_json_with_request_id_and_redacted() -> None:
    stream, log = _capture()
    token = request_id_var.set("req-42")
    try:
        log.info("exchanging %s for %s", TOKEN, "aud-1", extra={"target": "aud-1"})
    finally:
        request_id_var.reset(token)
    (line,) = _lines(stream)
    assert line["request_id"] == "req-42"
    assert line["service"] == "demo"
    assert line["level"] == "info"
    assert line["target"] == "aud-1"
    assert TOKEN not in stream.getvalue()
    assert "aud-1" in str(line["message"])


def test_exception_traceback_is_redacted() -> None:
    stream, log = _capture()
    try:
        raise ValueError(f"bad token Bearer {TOKEN}")
    except ValueError:
        log.exception("failed")
    (line,) = _lines(stream)
    assert "ValueError" in str(line["exception"])
    assert TOKEN not in stream.getvalue()
