"""Issue 14 item 2: the services that validate tokens (token exchange, policy) refuse to start
with an issuer without audiences (a token of any client of the realm, e.g. admin-cli, would pass)
unless ``allow_any_audience: true`` says so, and then start with a WARNING naming the issuer.

Before the fix the audience lists of manifests/base and the testbed were empty and only a WARNING
said so. Here each service runs as deployed: its console script, a YAML config, env overrides.
The backend verifies no token itself (the API server does): its binding to the gateway's tokens
(``accepted_audiences`` / ``authorized_parties``) is set by the manifests and tested in
``tests/mcp_backend/transport/test_token_binding.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.testbed.paths import REPO_ROOT
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(300)

ISSUER = "https://kc.example/realms/mcp"  # never contacted: the services start without it
REFUSAL = ("'audiences' is empty", "admin-cli", "allow_any_audience: true")
WARNING = f"issuer {ISSUER} has no audiences and allow_any_audience is set"


def _token_exchange(issuer: dict[str, Any], port: int) -> dict[str, Any]:
    return {
        "port": port,
        "validation": {"issuers": [issuer]},
        "targets": [{"audience": "no-exchange"}],
        "ext_authz": {"targets": ["no-exchange"]},
        "caller_auth": {"mode": "off"},
    }


def _policy(issuer: dict[str, Any], port: int) -> dict[str, Any]:
    return {
        "port": port,
        "engine": "embedded",
        "policies_dir": str(REPO_ROOT / "policies"),
        "auth": {"issuers": [issuer]},
        "caller_auth": {"mode": "off"},
    }


SERVICES = {
    # console script, config builder, exit code of a refused configuration, env prefix
    "token-exchange": ("mcp-token-exchange", _token_exchange, 2, "KMG_TOKEN_EXCHANGE_"),
    "policy": ("mcp-policy", _policy, 1, "KMG_POLICY_"),
}
ISSUER_PATH = {"token-exchange": "VALIDATION__ISSUERS", "policy": "AUTH__ISSUERS"}


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


async def _run_until_exit(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("service", list(SERVICES))
async def test_an_issuer_without_audiences_refuses_the_start(service: str, tmp_path: Path) -> None:
    script, config_of, code, _ = SERVICES[service]
    config = _write(tmp_path, config_of({"issuer": ISSUER}, free_port()))
    returncode, stderr = await _run_until_exit(
        [_script(script), "serve", "--config", str(config)], dict(os.environ)
    )
    assert returncode == code, stderr
    for fragment in REFUSAL:
        assert fragment in stderr, (service, stderr)
    assert "Traceback" not in stderr


@pytest.mark.parametrize("service", list(SERVICES))
async def test_an_env_override_without_audiences_is_refused_too(
    service: str, tmp_path: Path
) -> None:
    """The file binds the issuer; an env var replacing the issuer list must not unbind it."""
    script, config_of, code, prefix = SERVICES[service]
    config = _write(tmp_path, config_of({"issuer": ISSUER, "audiences": ["mcp-gateway"]}, 1))
    env = dict(os.environ, **{prefix + ISSUER_PATH[service]: json.dumps([{"issuer": ISSUER}])})
    returncode, stderr = await _run_until_exit(
        [_script(script), "serve", "--config", str(config)], env
    )
    assert returncode == code, stderr
    assert "'audiences' is empty" in stderr


@pytest.mark.parametrize("service", list(SERVICES))
async def test_allow_any_audience_starts_with_a_warning(service: str, tmp_path: Path) -> None:
    script, config_of, _, prefix = SERVICES[service]
    port = free_port()
    config = _write(tmp_path, config_of({"issuer": ISSUER, "allow_any_audience": True}, port))
    env = dict(os.environ, **{prefix + "LOG_LEVEL": "info"})
    proc = await asyncio.create_subprocess_exec(
        _script(script), "serve", "--config", str(config),
        cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                assert proc.returncode is None, "the service exited"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{service} did not start within 30s")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr_bytes = await asyncio.wait_for(proc.communicate(), timeout=30)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 0, stderr
    warnings = [
        json.loads(line) for line in stderr.splitlines() if line.startswith("{") and WARNING in line
    ]
    assert warnings, stderr[-2000:]
    assert warnings[0]["level"].lower() == "warning"
