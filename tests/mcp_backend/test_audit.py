"""The audit line's pieces: arguments that could hold secrets are elided, the line is JSON with
the trace id, and the API server's User-Agent names the trace (the end-to-end follow-up of one
call through the three logs is ``tests/e2e/test_tracing.py``)."""

from __future__ import annotations

import json
import logging

from mcp_backend import audit
from mcp_backend.log import JsonFormatter, request_id, trace_id

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl"


def test_free_form_and_secret_looking_arguments_are_elided() -> None:
    shown = audit.elide_arguments(
        {
            "namespace": "demo",
            "limit": 5,
            "dryRun": True,
            "resource": "apiVersion: v1\nkind: Secret\nstringData: {password: hunter2}",
            "values": {"adminPassword": "hunter2"},
            "command": ["sh", "-c", "mysql -phunter2"],
            "continue": "opaque-continue-token",
            "client_secret": "hunter2",
            "grep": f"Bearer {JWT}",
            "labelSelector": "x" * 300,
        }
    )
    assert shown["namespace"] == "demo"
    assert shown["limit"] == 5
    assert shown["dryRun"] is True
    assert shown["resource"].startswith("<elided: ")
    assert shown["values"] == "<elided: 1 keys>"
    assert shown["command"] == "<elided: 3 items>"
    assert shown["continue"].startswith("<elided")
    assert shown["client_secret"].startswith("<elided")
    assert JWT not in shown["grep"]
    assert shown["labelSelector"] == "<elided: 300 chars>"
    assert "hunter2" not in json.dumps(shown)


def test_groups_are_strings_only() -> None:
    assert audit.groups_of({"groups": ["dev", 3, "ops"]}) == ["dev", "ops"]
    assert audit.groups_of({"groups": "dev"}) == []
    assert audit.groups_of(None) == []


def test_the_audit_line_is_one_json_object_with_the_trace_and_request_ids() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    audit.log.addHandler(handler)
    audit.log.setLevel(logging.INFO)
    request_id.set("req-1")
    trace = trace_id.set("0af7651916cd43dd8448eb211c80319c")
    try:
        audit.record(
            user="mcp",
            groups=["dev"],
            cluster="cluster-a",
            tool="pods_list",
            arguments={"namespace": "demo", "values": {"k": "v"}},
            outcome="ok",
            duration_ms=1.234,
            bytes_returned=42,
        )
        assert audit.user_agent().endswith("(trace 0af7651916cd43dd8448eb211c80319c)")
    finally:
        trace_id.reset(trace)
        audit.log.removeHandler(handler)
    assert "trace" not in audit.user_agent()
    (record,) = records
    line = json.loads(JsonFormatter().format(record))
    assert line["type"] == "audit"
    assert line["message"] == "tool call"
    assert line["request_id"] == "req-1"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (line["user"], line["groups"], line["cluster"], line["tool"]) == (
        "mcp",
        ["dev"],
        "cluster-a",
        "pods_list",
    )
    assert line["arguments"] == {"namespace": "demo", "values": "<elided: 1 keys>"}
    assert (line["outcome"], line["duration_ms"], line["bytes"]) == ("ok", 1.23, 42)
