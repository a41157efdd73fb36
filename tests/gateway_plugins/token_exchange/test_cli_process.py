"""The console entry point as a real process: YAML + env + flags, JSON logs, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.testbed.paths import REPO_ROOT
from tests.testbed.ports import free_port


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer("mcp").start()
    yield server
    await server.close()


async def test_serve_logs_json_and_stops_gracefully(issuer: LocalIssuer, tmp_path: Path) -> None:
    config = tmp_path / "te.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 1,  # overridden by the flag below
                "validation": {"issuers": [{"issuer": issuer.issuer, "audiences": ["gw"]}]},
                "targets": [{"audience": "no-exchange"}],
                "ext_authz": {"targets": ["no-exchange"]},
                "caller_auth": {"secret_env": "KMG_TEST_CALLER_SECRET"},
            }
        )
    )
    port = free_port()
    caller = "cli-caller-secret-test-only"  # test-only credential
    env = dict(os.environ, KMG_TOKEN_EXCHANGE_LOG_LEVEL="info", KMG_TEST_CALLER_SECRET=caller)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_plugins.token_exchange", "serve",
        "--config", str(config), "--port", str(port),
        cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    token = issuer.token("dave", aud=["gw", "no-exchange"])
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                try:
                    async with client.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            headers = {"authorization": f"Bearer {token}", "x-mcp-servername": "no-exchange"}
            async with client.post(f"http://127.0.0.1:{port}/check", headers=headers) as resp:
                assert resp.status == 403  # not the gateway: no caller secret
                assert (await resp.json())["error"] == "caller_unauthenticated"
            headers["x-kmg-caller-secret"] = caller
            async with client.post(f"http://127.0.0.1:{port}/check", headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["authorization"] == f"Bearer {token}"
            async with client.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in lines]
    assert any(f"listening on http://127.0.0.1:{port}" in m for m in messages)
    assert any("shutting down" in m for m in messages)
    assert all(entry["service"] == "token-exchange" for entry in lines)
    assert token not in stderr.decode()


async def test_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "te.yaml"
    config.write_text("validation:\n  issuers: []\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_plugins.token_exchange", "serve", "--config", str(config),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2
    text = stderr.decode()
    assert "validation.issuers" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (  # an issuer without audiences: tokens of any client of the realm would pass
            {"validation": {"issuers": [{"issuer": "https://kc.example/realms/mcp"}]},
             "caller_auth": {"mode": "off"}},
            ["'audiences' is empty", "admin-cli", "allow_any_audience: true"],
        ),
        (  # no caller credential for the checks: any pod could ask them
            {"validation": {"issuers": [{"issuer": "https://kc.example/realms/mcp",
                                         "audiences": ["mcp-gateway"]}]}},
            ["caller_auth.secret_file", "caller_auth.mode: mtls", "caller_auth.mode: off"],
        ),
        (  # a check target that is not configured
            {"validation": {"issuers": [{"issuer": "https://kc.example/realms/mcp",
                                         "audiences": ["mcp-gateway"]}]},
             "caller_auth": {"mode": "off"}, "ext_authz": {"targets": ["cluster-b"]}},
            ["ext_authz.targets ['cluster-b'] are not configured"],
        ),
    ],
)  # fmt: skip
async def test_unsafe_configs_are_refused_at_start_naming_the_setting(
    tmp_path: Path, config: dict[str, object], expected: list[str]
) -> None:
    path = tmp_path / "te.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_plugins.token_exchange", "check-config",
        "--config", str(path),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    text = stderr.decode()
    assert proc.returncode == 2, text
    for fragment in expected:
        assert fragment in text
    assert "Traceback" not in text
