"""Graceful shutdown (SIGTERM) of the real backend and of the real token service: the in-flight
request finishes with its real answer, new connections are refused, the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    CALLER_SECRET,
)
from tests.mcp_backend.conftest import (
    cluster_entry,
)
from tests.reliability.fault_injection import frozen
from tests.reliability.service_calls import timed_call, token_exchange_check
from tests.testbed import keycloak as kc
from tests.testbed import leak_scan
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(900)


# -- graceful shutdown -------------------------------------------------------------------------
def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as resp,  # noqa: S310 - loopback
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout}s")


@contextlib.contextmanager
def _service_process(
    argv: list[str], log: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_http(ready_url, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _raw_call(url: str, token: str, tool: str) -> tuple[bool, str, float]:
    started = time.monotonic()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(url, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        result = (await resp.json())["result"]
    text = "".join(c.get("text", "") for c in result["content"])
    leak_scan.record_output(f"{tool} during shutdown", text)
    return bool(result.get("isError")), text, time.monotonic() - started


async def _refused(url: str) -> str:
    """How a new request is answered during shutdown: 'refused', or the HTTP status."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url) as resp,
        ):
            return f"HTTP {resp.status}"
    except (aiohttp.ClientConnectionError, TimeoutError):
        return "refused"


async def test_backend_graceful_shutdown_finishes_in_flight_and_refuses_new(
    cluster_a: Cluster, sa_tokens: dict[str, str], testbed_run_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "backend.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": port,
                "request_timeout_s": 30,
                "clusters": [cluster_entry(cluster_a, default=True)],
            }
        )
    )
    argv = [str(Path(sys.executable).parent / "mcp-backend"), "serve", "--config", str(config)]
    base = f"http://127.0.0.1:{port}"
    with _service_process(
        argv, testbed_run_dir / "rel-backend-shutdown.log", f"{base}/healthz"
    ) as proc:
        ok, text, _ = await timed_call(f"{base}/mcp", sa_tokens["cluster-a"], "namespaces_list", {})
        assert not ok, text
        with frozen(cluster_a):
            # One raw tools/call (stateless): a client library would send more requests after it.
            in_flight = asyncio.create_task(
                _raw_call(f"{base}/mcp", sa_tokens["cluster-a"], "namespaces_list")
            )
            await asyncio.sleep(1.0)  # the call now waits on the frozen API server
            assert not in_flight.done()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            new_request = await _refused(f"{base}/healthz")
        is_error, text, _ = await asyncio.wait_for(in_flight, 40)
        exit_code = await asyncio.to_thread(proc.wait, 30)
    assert not is_error, f"the in-flight call did not finish with its answer: {text}"
    assert "default" in text
    assert new_request in ("refused", "HTTP 503"), new_request
    # uvicorn re-raises SIGTERM after a complete shutdown (exit -15 = 143 in a shell), which
    # Kubernetes treats as a normal stop; the log proves the shutdown ran to its end.
    assert exit_code in (0, -signal.SIGTERM), exit_code
    log = (testbed_run_dir / "rel-backend-shutdown.log").read_text()
    assert "Application shutdown complete." in log


async def test_token_service_graceful_shutdown_finishes_in_flight_and_refuses_new(
    keycloak: kc.Keycloak, testbed_run_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    secret = tmp_path / "sts.secret"
    secret.write_text(keycloak.gateway_client_secret + "\n")
    secret.chmod(0o600)
    caller = tmp_path / "caller.secret"
    caller.write_text(CALLER_SECRET + "\n")
    caller.chmod(0o600)
    config = tmp_path / "token-exchange.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": port,
                "ca_file": str(keycloak.ca_file),
                "validation": {
                    "issuers": [
                        {"issuer": keycloak.issuer(REALM_MCP), "audiences": ["mcp-gateway"]}
                    ]
                },
                "ext_authz": {"targets": [BACKEND_AUDIENCE]},
                "caller_auth": {"secret_file": str(caller)},
                "sts": {
                    "mcp": {
                        "token_url": keycloak.token_url(REALM_MCP),
                        "client_id": keycloak.gateway_client_id,
                        "client_secret_file": str(secret),
                        "timeout_s": 30,
                    }
                },
                "targets": [
                    {"audience": BACKEND_AUDIENCE, "steps": [{"sts": "mcp"}], "skip_when": "never"}
                ],
            }
        )
    )
    argv = [
        str(Path(sys.executable).parent / "mcp-token-exchange"),
        "serve",
        "--config",
        str(config),
    ]
    base = f"http://127.0.0.1:{port}"
    user = await asyncio.to_thread(keycloak.user_token, "viewer", "viewer")
    kc_proc = keycloak._proc.proc if keycloak._proc is not None else None
    assert kc_proc is not None
    with _service_process(
        argv, testbed_run_dir / "rel-token-exchange-shutdown.log", f"{base}/readyz"
    ) as proc:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), headers=CALLER_HEADERS
        ) as http:
            # Keycloak frozen: the exchange stays in flight until it is resumed.
            os.killpg(os.getpgid(kc_proc.pid), signal.SIGSTOP)
            try:
                in_flight = asyncio.create_task(token_exchange_check(http, base, user))
                await asyncio.sleep(1.0)
                assert not in_flight.done()
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(1.0)
                new_request = await _refused(f"{base}/healthz")
            finally:
                os.killpg(os.getpgid(kc_proc.pid), signal.SIGCONT)
            status, body = await asyncio.wait_for(in_flight, 40)
        exit_code = await asyncio.to_thread(proc.wait, 30)
    assert status == 200, body
    assert new_request in ("refused", "HTTP 503"), new_request
    assert exit_code == 0, exit_code
