"""The audit line's parts: what is elided, who the caller is, the ids passed on.

Pure functions and the log formatter; the whole trail (gateway → backend → API server audit log)
is followed against the real components in ``tests/e2e/test_audit_trail.py``.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from kmg_common.logging import JsonFormatter, request_id_var
from mcp_backend.audit import audit_id, audited_arguments, caller_of, trace_id

JWT_LIKE = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4eXoifQ.c2lnbmF0dXJlLXZhbHVl"


def _jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_values_that_can_carry_secrets_are_elided_with_their_size() -> None:
    manifest = "apiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2\n"
    shown = audited_arguments(
        {
            "resource": manifest,
            "command": ["sh", "-c", "curl -H 'Authorization: x' http://a"],
            "values": {"adminPassword": "hunter2"},
            "db_password": "hunter2",
            "apiKey": "k-123",
            "namespace": "demo",
            "limit": 5,
            "labels": {"app": "web", "token": "t-1"},
        }
    )
    assert shown["resource"] == f"<elided: {len(manifest)} chars>"
    assert shown["command"] == "<elided: 3 items>"
    assert shown["values"].startswith("<elided: ")
    assert shown["db_password"].startswith("<elided: ")
    assert shown["apiKey"].startswith("<elided: ")
    assert shown["namespace"] == "demo"
    assert shown["limit"] == 5
    assert shown["labels"] == {"app": "web", "token": "<elided: 3 chars>"}
    assert "hunter2" not in json.dumps(shown)
    assert "k-123" not in json.dumps(shown)


def test_long_values_are_cut_and_say_their_length() -> None:
    shown = audited_arguments({"labelSelector": "a" * 1000, "names": list(range(50))})
    assert shown["labelSelector"] == "a" * 200 + "... (1000 chars)"
    assert shown["names"][:20] == list(range(20))
    assert shown["names"][20:] == ["... (50 items)"]


def test_a_token_in_an_ordinary_argument_is_redacted_in_the_line() -> None:
    record = logging.LogRecord("calls", logging.INFO, __file__, 1, "tool call", (), None)
    record.arguments = audited_arguments({"namespace": JWT_LIKE, "grep": f"Bearer {JWT_LIKE}"})
    record.groups = ["ok", JWT_LIKE]
    line = JsonFormatter("mcp-backend").format(record)
    assert JWT_LIKE not in line
    assert json.loads(line)["arguments"]["namespace"] == "[REDACTED]"


def test_the_caller_is_what_the_token_claims() -> None:
    keycloak = _jwt(
        {"sub": "u-1", "preferred_username": "alice", "groups": ["ops", "dev"], "azp": "mcp-cli"}
    )
    assert caller_of(keycloak).user == "alice"
    assert caller_of(keycloak).groups == ("ops", "dev")
    assert caller_of(keycloak).client == "mcp-cli"
    service_account = _jwt({"sub": "system:serviceaccount:demo:bot"})
    assert caller_of(service_account).user == "system:serviceaccount:demo:bot"
    assert caller_of(service_account).groups == ()
    for opaque in ("sha256~abc", "not.a.jwt!", "a.b", None):
        assert caller_of(opaque).user == "unknown"


@pytest.mark.parametrize(
    ("rid", "prefix"),
    [
        ("83a8769a-6f9d-4558-ac60-5fb47b27819b", "83a8769a-6f9d-4558-ac60-5fb47b27819b-"),
        ("kube-system\nforged", "kmg-"),
        ("x" * 65, "kmg-"),
        ("-", "kmg-"),
    ],
)
def test_the_audit_id_carries_a_well_formed_request_id_only(rid: str, prefix: str) -> None:
    reset = request_id_var.set(rid)
    try:
        first, second = audit_id(), audit_id()
    finally:
        request_id_var.reset(reset)
    assert first.startswith(prefix)
    assert second.startswith(prefix)
    assert first != second  # one id per API request


def test_trace_id_is_read_from_a_valid_traceparent_only() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}) == trace
    assert trace_id({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}) is None
    assert trace_id({"traceparent": f"01-{trace}-00f067aa0ba902b7-01"}) is None
    assert trace_id({"traceparent": "garbage"}) is None
    assert trace_id({}) is None
