"""The ``mcp-backend`` command: every setting has a documented flag (or is YAML-only), a real
start serves health and metrics, and a bad config exits with a one-line reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from mcp_backend.cli import FLAGS, parser
from mcp_backend.config import Settings
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
