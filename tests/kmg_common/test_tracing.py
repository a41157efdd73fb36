"""kmg_common.tracing: off costs nothing (no SDK loaded by any service), bad settings are refused
clearly, and on, spans reach the testbed's real Jaeger with the caller's trace id, sampled
parent-based."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from kmg_common.tracing import (
    TracingSettings,
    annotate,
    current_trace_id,
    inject,
    start_tracing,
    subject_name,
)
from tests.testbed import paths
from tests.testbed.jaeger import Jaeger

# Builds each service's app with tracing left at its default, then checks what got imported.
_OFF_SCRIPT = """
import sys
from mcp_backend.app import create_backend
from mcp_backend.config import Settings
from gateway_plugins.policy.app import create_app as policy_app
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.common.service import TRACING

backend = create_backend(Settings(clusters=[{"name": "a", "server": "https://127.0.0.1:1"}]))
assert backend.handlers.tracing is None
app = policy_app(
    PolicySettings(
        policies_dir="policies",
        auth={"issuers": [{"issuer": "https://127.0.0.1:1/realms/r", "audiences": ["a"]}]},
        caller_auth={"mode": "off"},
    )
)
assert TRACING not in app
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
print("SDK:", loaded)
"""


def test_off_by_default_loads_no_sdk_in_the_services() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _OFF_SCRIPT],
        cwd=paths.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SDK: []" in proc.stdout, proc.stdout
    assert start_tracing(TracingSettings(), "svc") is None


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("collector:4318", "must be an http(s) URL"),
        ("grpc://collector:4317", "must be an http(s) URL"),
        ("http://user:pw@collector:4318/v1/traces", "must not carry credentials"),
    ],
)
def test_a_bad_endpoint_is_refused_with_the_reason(endpoint: str, problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        TracingSettings(endpoint=endpoint)
    message = err.value.errors(include_input=False)[0]["msg"]
    assert problem in message
    assert "pw" not in message  # the loaders print messages without inputs: no secret echoed


def test_ratio_out_of_range_and_blank_endpoint() -> None:
    with pytest.raises(ValidationError):
        TracingSettings(sampling_ratio=1.5)
    assert TracingSettings(endpoint="  ").endpoint is None


def test_subject_name_prefers_the_username_and_never_reads_other_claims() -> None:
    assert subject_name({"preferred_username": "mcp", "sub": "1234"}) == "mcp"
    assert subject_name({"sub": "1234"}) == "1234"
    assert subject_name({"access_token": "x"}) is None
    assert subject_name(None) is None


def test_without_a_span_the_helpers_do_nothing() -> None:
    annotate({"enduser.id": "mcp"})  # no current span: must not raise
    assert current_trace_id() is None


def test_spans_reach_jaeger_under_the_callers_trace_and_sampling_follows_the_caller(
    trace_collector: Jaeger,
) -> None:
    """Ratio 0: a new trace is dropped, a caller's sampled traceparent is followed, an
    unsampled one is passed on as it came."""
    tracing = start_tracing(
        TracingSettings(
            endpoint=trace_collector.otlp_http_traces_url,
            sampling_ratio=0.0,
            service_name="kmg-tracing-test",
        ),
        "ignored",
    )
    assert tracing is not None
    followed, parent = secrets.token_hex(16), secrets.token_hex(8)
    with tracing.server_span(
        "followed", {"traceparent": f"00-{followed}-{parent}-01"}, {"enduser.id": "mcp"}
    ):
        assert current_trace_id() == followed
        annotate({"kmg.outcome": "ok", "ignored": None})
        with tracing.span("inner"):
            pass
    with tracing.server_span("new root", {}) as span:
        assert not span.is_recording()
        assert current_trace_id() is None  # no span, no context: nothing to pass on
    unsampled, caller = secrets.token_hex(16), secrets.token_hex(8)
    with tracing.server_span("unsampled", {"traceparent": f"00-{unsampled}-{caller}-00"}) as span:
        assert not span.is_recording()
        carried: dict[str, str] = {}
        inject(carried)  # the caller's context goes on as it came: not sampled
        assert carried["traceparent"] == f"00-{unsampled}-{caller}-00"
    tracing.shutdown()  # flushes the batch

    trace = trace_collector.wait_trace(followed, services={"kmg-tracing-test"})
    names = {s["operationName"]: s for s in trace["spans"]}
    assert set(names) == {"followed", "inner"}
    root = names["followed"]
    assert [r["spanID"] for r in root["references"]] == [parent]
    tags = {t["key"]: t["value"] for t in root["tags"]}
    assert tags["enduser.id"] == "mcp"
    assert tags["kmg.outcome"] == "ok"
    assert "ignored" not in tags
    assert names["inner"]["references"][0]["spanID"] == root["spanID"]
    time.sleep(1)  # anything exported would be there by now (the export above is done)
    assert trace_collector.trace(unsampled) is None
