"""JSON logs carry the request id and never a token or secret."""

from __future__ import annotations

import io
import json
import logging

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kmg_common.logging import (
    configure_logging,
    redact,
    redact_value,
    request_id_var,
)

TOKEN = jwt.encode(
    {"sub": "alice", "exp": 9999999999},
    rsa.generate_private_key(public_exponent=65537, key_size=2048),
    algorithm="RS256",
)


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


# The backend's former redaction cases (mcp_backend/log.py before the two modules were merged),
# and the forms only one of the two modules used to catch: the merged module catches all of them.
@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("POST /token access_token=opaque-abc123&expires_in=300", "opaque-abc123"),
        ('{"access_token": "opaque-abc123", "token_type": "Bearer"}', "opaque-abc123"),
        ("{'client_secret': 's3cr3t-value'}", "s3cr3t-value"),
        ('body {\\"token\\":\\"opaque-abc123\\"}', "opaque-abc123"),
        ("token: opaque-abc123", "opaque-abc123"),
        ("client_secret=s3cr3t-value; next", "s3cr3t-value"),
        ("redirect?x=1&refresh_token%3Dopaque-abc123", "opaque-abc123"),  # was backend only
        ("form subject_token%3aopaque-abc123", "opaque-abc123"),
        ("header=Bearer%20opaque-abc123", "opaque-abc123"),
        ("Authorization: bearer opaque-abc123", "opaque-abc123"),
        ("Authorization: Bearer abc=def.ghi", "def.ghi"),  # "=" inside: was backend only
        ("x-bearer opaque-abc123", "opaque-abc123"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),  # was plugins only
        ("proxy-authorization: basic+dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("user token sha256~AbCdEf0123456789_xyz-987 rejected", "AbCdEf0123456789_xyz-987"),
        ("jwt eyJhbGci.eyJzdWIi.c2ln in text", "eyJzdWIi"),  # 4-char segments: was plugins only
        ("glued:xeyJhbGciOiJ.eyJzdWIiOiJ.sig", "eyJzdWIiOiJ"),  # no word boundary: backend only
        ("password=hunter2", "hunter2"),
        ("client_assertion=eyJ-not-a-jwt", "eyJ-not-a-jwt"),  # was plugins only
    ],
)
def test_redact_union_of_both_former_modules(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted, redacted
    assert "[REDACTED]" in redacted


@pytest.mark.parametrize(
    "text",
    [
        "listed 3 pods in mcpb (tokens=2, duration_ms=12)",
        "basically nothing",
        "nonbasic settings",
    ],
)
def test_redact_keeps_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_backend_log_line_carries_service_request_id_and_fields() -> None:
    stream = io.StringIO()
    configure_logging("mcp-backend", "INFO", stream=stream)
    log = logging.getLogger("tests.backend")
    token = request_id_var.set("req-42")
    try:
        log.info(
            "token %s",
            TOKEN,
            extra={
                "tool": {"name": "pods_list", "access_token": "opaque-abc123"},
                "cluster": ["a", "Bearer opaque-def456"],
                "duration_ms": 12,
            },
        )
    finally:
        request_id_var.reset(token)
    raw = stream.getvalue()
    (line,) = _lines(stream)
    assert line["service"] == "mcp-backend"
    assert line["request_id"] == "req-42"
    assert line["tool"] == {"name": "pods_list", "access_token": "[REDACTED]"}
    assert line["cluster"] == ["a", "Bearer [REDACTED]"]
    assert line["duration_ms"] == 12
    for secret in (TOKEN, "opaque-abc123", "opaque-def456"):
        assert secret not in raw
