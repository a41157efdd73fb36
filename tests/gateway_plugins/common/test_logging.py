"""JSON logs carry the request id and never a token or secret."""

from __future__ import annotations

import io
import json
import logging

import jwt
import pytest

from gateway_plugins.common.logging import (
    configure_logging,
    redact,
    redact_value,
    request_id_var,
)
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


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        ("{'subject_token': 'x'}", ["'x'"], ["'subject_token'"]),  # Python repr
        ("{'client_secret': 'two words', 'client_id': 'gw'}", ["two", "words"], ["'gw'"]),
        ('{"client_secret": "hunter 2 with spaces"}', ["hunter", "spaces"], ['"client_secret"']),
        ('body="{\\"client_secret\\": \\"a b\\", \\"n\\": 1}"', ['\\"a b\\"'], ['\\"n\\": 1']),
        ("client_secret='p w'", ["p w", "'p"], ["client_secret="]),
        ("authorization=Bearer%20abc.DEF-ghi~&x=1", ["abc.DEF-ghi~"], ["x=1"]),
        ("Authorization: Bearer+abc%2Bdef", ["abc%2Bdef", "abc"], ["Authorization"]),
        ("openshift token sha256~AbC_dEf-0123456789xyz used", ["AbC_dEf-0123456789xyz"], ["used"]),
        ("subject_token_type=urn:x token_type=Bearer", [], ["urn:x", "token_type=Bearer"]),
    ],
)
def test_redact_each_form(text: str, secrets: list[str], kept: list[str]) -> None:
    redacted = redact(text)
    for secret in secrets:
        assert secret not in redacted, (text, redacted)
    for part in kept:
        assert part in redacted, (text, redacted)
    if secrets:
        assert "[REDACTED]" in redacted
    assert redact(redacted) == redacted  # idempotent: the filter and the formatter both redact


def test_non_string_extra_values_are_redacted() -> None:
    stream, log = _capture()
    log.warning(
        "token request failed",
        extra={
            "form": {"subject_token": "opaque-abc", "audience": "cluster-b", "nested": [TOKEN]},
            "headers": {"Authorization": "Basic dXNlcjpwYXNz", "accept": "application/json"},
            "pairs": [("client_secret", "s3cr3t value"), ("grant_type", "x")],
            "count": 3,
        },
    )
    raw = stream.getvalue()
    for secret in ("opaque-abc", TOKEN, "dXNlcjpwYXNz"):
        assert secret not in raw
    (line,) = _lines(stream)
    assert line["form"] == {
        "subject_token": "[REDACTED]",
        "audience": "cluster-b",
        "nested": ["[REDACTED]"],
    }
    assert line["headers"] == {"Authorization": "[REDACTED]", "accept": "application/json"}
    assert line["pairs"] == [["client_secret", "[REDACTED]"], ["grant_type", "x"]]
    assert line["count"] == 3
    assert redact_value({"password": 1234, "level": 2}) == {"password": "[REDACTED]", "level": 2}


def test_repr_of_form_pairs_is_redacted() -> None:
    """A list of (name, value) pairs (a form before encoding) formatted into a message."""
    text = redact(str([("grant_type", "x"), ("client_secret", "s3cr3t value"), ("n", "1")]))
    assert "s3cr3t" not in text
    assert "('client_secret', '[REDACTED]')" in text
    assert "('grant_type', 'x')" in text
