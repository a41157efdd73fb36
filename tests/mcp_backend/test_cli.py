"""The ``mcp-backend`` command: every setting has a documented flag (or is YAML-only), a real
start serves health and metrics, and a bad config exits with a one-line reason."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcp_backend.cli import FLAGS, parser
from mcp_backend.config import Settings
from mcp_backend.log import JsonFormatter, request_id, scrub
from tests.testbed import paths, process
from tests.testbed.ports import free_port

YAML_ONLY = {"clusters", "denied_kinds", "tracing"}  # structured: YAML file or JSON env var


def test_every_setting_has_a_flag_with_its_default_in_help() -> None:
    flagged = {field for _, field, _ in FLAGS}
    assert flagged | YAML_ONLY == set(Settings.model_fields)
    serve = parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for flag, field, _ in FLAGS:
        assert flag in text, flag
        help_text = serve._option_string_actions[flag].help or ""
        assert help_text.startswith(Settings.model_fields[field].description or "?"), flag
        assert "(default: " in help_text, flag
    assert "KMG_BACKEND_" in text
    assert "--config" in text


def test_serve_starts_and_answers_health_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "backend.yaml"
    config.write_text(
        yaml.safe_dump(
            {"port": port, "clusters": [{"name": "nowhere", "server": "https://127.0.0.1:1"}]}
        )
    )
    proc = process.ManagedProcess(
        "mcp-backend-cli-test",
        [sys.executable, "-m", "mcp_backend", "serve", "--config", str(config), "--read-only"],
        tmp_path / "backend.log",
        cwd=paths.REPO_ROOT,
    )
    proc.start()
    try:
        base = f"http://127.0.0.1:{port}"
        proc.wait_until(lambda: process.http_ok(f"{base}/readyz"), timeout=30, what="ready")
        assert process.http_ok(f"{base}/healthz")
        assert process.http_ok(f"{base}/metrics")
    finally:
        proc.stop()


def test_bad_config_exits_2_with_a_clear_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("clusters:\n  - name: a\n    server: not-a-url\n")
    done = subprocess.run(
        [sys.executable, "-m", "mcp_backend", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=paths.REPO_ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert "clusters.0.server" in done.stderr
    assert "http(s) URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_logs_carry_request_id_and_never_a_token() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2lnbmF0dXJlLXZhbHVl"
    assert jwt not in scrub(f"call with {jwt}")
    assert "opaque123" not in scrub("Authorization: Bearer opaque123")
    request_id.set("req-42")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", (jwt,), None)
    record.tool = "pods_list"
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42"
    assert line["tool"] == "pods_list"
    assert jwt not in json.dumps(line)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("POST /token access_token=opaque-abc123&expires_in=300", "opaque-abc123"),
        ('{"access_token": "opaque-abc123", "token_type": "Bearer"}', "opaque-abc123"),
        ("{'client_secret': 's3cr3t-value'}", "s3cr3t-value"),
        ('body {\\"token\\":\\"opaque-abc123\\"}', "opaque-abc123"),
        ("token: opaque-abc123", "opaque-abc123"),
        ("client_secret=s3cr3t-value; next", "s3cr3t-value"),
        ("redirect?x=1&refresh_token%3Dopaque-abc123", "opaque-abc123"),
        ("header=Bearer%20opaque-abc123", "opaque-abc123"),
        ("Authorization: bearer opaque-abc123", "opaque-abc123"),
        ("user token sha256~AbCdEf0123456789_xyz-987 rejected", "AbCdEf0123456789_xyz-987"),
    ],
)
def test_scrub_redacts_key_values_encoded_bearers_and_opaque_tokens(text: str, secret: str) -> None:
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert "<redacted>" in scrubbed


def test_scrub_keeps_ordinary_text() -> None:
    text = "listed 3 pods in mcpb (tokens=2, duration_ms=12)"
    assert scrub(text) == text


def test_structured_log_extras_keep_their_shape_and_are_redacted() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "call", (), None)
    record.tool = {"name": "pods_list", "access_token": "opaque-abc123"}
    record.cluster = ["a", "Bearer opaque-def456"]
    record.duration_ms = 12
    line = json.loads(JsonFormatter().format(record))
    assert "opaque-abc123" not in json.dumps(line)
    assert "opaque-def456" not in json.dumps(line)
    assert line["tool"] == {"name": "pods_list", "access_token": "<redacted>"}
    assert line["cluster"] == ["a", "Bearer <redacted>"]
    assert line["duration_ms"] == 12
