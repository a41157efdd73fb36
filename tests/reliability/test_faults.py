"""Faults with real components stopped, frozen and restarted mid-load.

* An API server hangs (SIGSTOP: accepts TCP, never answers) or is down (process stopped): tool
  results name the cluster, the other cluster keeps working, nothing waits past the configured
  timeout; everything recovers without a restart of the backend.
* Keycloak returns after an outage: the token service exchanges again within 5 s.
* OPA stopped: every decision path of the policy service denies with a reason, then recovers.
* Graceful shutdown (SIGTERM) of the backend and of the token service: the in-flight request
  finishes with its real answer, new connections are refused, the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mcp_backend.config import Settings
from tests.gateway_plugins.policy.running import SERVER, policy_settings, running_policy
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    CALLER_SECRET,
    RunningService,
)
from tests.mcp_backend.conftest import (
    RunningBackend,
    cluster_entry,
    mcp_client,
    start_backend,
    stop_backend,
    text_of,
)
from tests.testbed import keycloak as kc
from tests.testbed import leak_scan
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP
from tests.testbed.opa_server import OpaServer
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(900)

TIMEOUT_S = 3.0  # the backend's request_timeout_s in these tests


@contextlib.contextmanager
def frozen(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP the cluster's kube-apiserver (a hung server: connects, never answers)."""
    proc = cluster.processes["kube-apiserver"].proc
    assert proc is not None
    assert proc.poll() is None, "kube-apiserver is not running"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while _state(proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(proc.pid) == "T", f"kube-apiserver not stopped: {_state(proc.pid)}"
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="module")
async def sa_tokens(
    cluster_a: Cluster, cluster_b: Cluster, service_account_token: Any
) -> dict[str, str]:
    return {
        "cluster-a": await service_account_token(
            cluster_a, name="rel-fault-view", cluster_role="view", cluster_wide=True
        ),
        "cluster-b": await service_account_token(
            cluster_b, name="rel-fault-view", cluster_role="view", cluster_wide=True
        ),
    }


@pytest.fixture(scope="module")
async def two_cluster_backend(
    cluster_a: Cluster, cluster_b: Cluster
) -> AsyncIterator[RunningBackend]:
    running = await start_backend(
        Settings.model_validate(
            {
                "clusters": [cluster_entry(cluster_a, default=True), cluster_entry(cluster_b)],
                "request_timeout_s": TIMEOUT_S,
                "connect_timeout_s": 2,
                "discovery_timeout_s": TIMEOUT_S,
            }
        )
    )
    yield running
    await stop_backend(running)


async def _call(url: str, token: str, tool: str, args: dict[str, Any]) -> tuple[bool, str, float]:
    started = time.monotonic()
    async with mcp_client(url, token) as client:
        result = await client.call_tool(tool, args)
    text = text_of(result)
    leak_scan.record_output(f"{tool} {args}", text)
    return bool(result.is_error), text, time.monotonic() - started


async def test_hung_api_server_is_named_bounded_and_isolated(
    two_cluster_backend: RunningBackend, cluster_b: Cluster, sa_tokens: dict[str, str]
) -> None:
    url = two_cluster_backend.url
    ok, text, _ = await _call(
        url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
    )
    assert not ok, text  # warm: discovery and connection pool of B
    with frozen(cluster_b):
        on_b, on_a = await asyncio.gather(
            _call(url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}),
            _call(url, sa_tokens["cluster-a"], "namespaces_list", {}),
        )
        # A second call on B while it still hangs: again bounded, not stuck behind the first.
        on_b_again = await _call(url, sa_tokens["cluster-b"], "pods_list", {"context": "cluster-b"})
    is_error, text, elapsed = on_b
    assert is_error, text
    assert "'cluster-b'" in text, text
    assert cluster_b.server in text, text
    assert f"within {TIMEOUT_S:g}s" in text, text
    assert elapsed < TIMEOUT_S + 5, elapsed
    assert on_b_again[0], on_b_again
    assert "'cluster-b'" in on_b_again[1], on_b_again
    assert on_b_again[2] < TIMEOUT_S + 5, on_b_again
    a_error, a_text, a_elapsed = on_a
    assert not a_error, a_text
    assert "default" in a_text
    assert a_elapsed < TIMEOUT_S + 5
    # Resumed: B answers again, same backend process.
    deadline = time.monotonic() + 30
    while True:
        is_error, text, _ = await _call(
            url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
        )
        if not is_error or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not is_error, text


async def test_stopped_api_server_is_named_and_recovers_without_restart(
    two_cluster_backend: RunningBackend, cluster_b: Cluster, sa_tokens: dict[str, str]
) -> None:
    url = two_cluster_backend.url
    apiserver = cluster_b.processes["kube-apiserver"]
    await asyncio.to_thread(apiserver.stop)
    try:
        is_error, text, elapsed = await _call(
            url, sa_tokens["cluster-b"], "pods_list", {"context": "cluster-b"}
        )
        assert is_error, text
        assert "'cluster-b'" in text, text
        assert "unreachable" in text, text
        assert elapsed < TIMEOUT_S + 5
        a_error, a_text, _ = await _call(url, sa_tokens["cluster-a"], "namespaces_list", {})
        assert not a_error, a_text
    finally:
        await asyncio.to_thread(apiserver.start)
    deadline = time.monotonic() + 120
    while True:
        is_error, text, _ = await _call(
            url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
        )
        if not is_error or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert not is_error, f"cluster B did not come back through the same backend: {text}"


# -- Keycloak comes back ----------------------------------------------------------------------
async def _te_check(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}", "x-mcp-servername": BACKEND_AUDIENCE}
    async with http.post(f"{url}/check/mcp", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_token_service_recovers_within_5s_of_keycloak_return(
    http: aiohttp.ClientSession, token_service: RunningService, keycloak: kc.Keycloak
) -> None:
    uncached = await asyncio.to_thread(keycloak.user_token, "viewer", "viewer")
    cached = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    assert (await _te_check(http, token_service.url, cached))[0] == 200
    await asyncio.to_thread(keycloak.stop)
    try:
        status, body = await _te_check(http, token_service.url, uncached)
        assert status == 503, body
        assert body["allow"] is False, body
        assert body["reason"], body
        assert (await _te_check(http, token_service.url, cached))[0] == 200  # from the cache
    finally:
        await asyncio.to_thread(keycloak.start)
    back = time.monotonic()
    while True:
        status, body = await _te_check(http, token_service.url, uncached)
        if status == 200 or time.monotonic() - back > 30:
            break
        await asyncio.sleep(0.2)
    recovered_after = time.monotonic() - back
    assert status == 200, body
    assert recovered_after <= 5.0, f"recovered {recovered_after:.1f}s after Keycloak was ready"


# -- OPA stopped: every decision path denies ---------------------------------------------------
@pytest.fixture
def opa(testbed_run_dir: Path) -> Iterator[OpaServer]:
    server = OpaServer(testbed_run_dir / "rel-opa", load=[], name="opa-reliability")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_opa_down_denies_every_decision_path_then_recovers(
    http: aiohttp.ClientSession,
    keycloak: kc.Keycloak,
    opa: OpaServer,
    tmp_path: Path,
) -> None:
    token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    settings = policy_settings(keycloak, tmp_path / "opa", engine="opa", opa_url=opa.url)
    settings = settings.model_copy(
        update={"wristband": settings.wristband.model_copy(update={"cache_ttl_s": 0})}
    )
    auth = {"Authorization": f"Bearer {token}"}
    call = auth | {
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_list",
    }
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pods_list"}}
    )
    listing = auth | {"x-mcp-method": "tools/list", "x-mcp-servername": "mcpBroker"}

    async def answers(svc_url: str) -> dict[str, tuple[int, Any]]:
        out: dict[str, tuple[int, Any]] = {}
        for name, method, path, kwargs in (
            ("check tools/call", "POST", "/check/mcp", {"headers": call, "data": body}),
            ("check tools/list", "POST", "/check/mcp", {"headers": listing}),
            (
                "decide",
                "POST",
                "/v1/decide",
                {"headers": auth, "json": {"server": SERVER, "tool": "pods_list"}},
            ),
            (
                "filter",
                "POST",
                "/v1/filter",
                {"headers": auth, "json": {"server": SERVER, "tools": ["pods_list"]}},
            ),
        ):
            async with http.request(method, f"{svc_url}{path}", **kwargs) as resp:
                out[name] = (resp.status, await resp.json())
        return out

    async with running_policy(settings) as svc:
        healthy = await answers(svc.url)
        assert healthy["check tools/call"][0] == 200, healthy
        opa.stop()
        try:
            down = await answers(svc.url)
        finally:
            opa.start()
        problems = {
            name: (status, payload)
            for name, (status, payload) in down.items()
            if status == 200 or payload.get("allow") is not False or not payload.get("reason")
        }
        # /v1/filter answers a list, not a decision: it must not return any allowed tool.
        if "filter" in problems:
            status, payload = problems["filter"]
            if status != 200 or (not payload.get("allowed") and not payload.get("tools")):
                problems.pop("filter")
        assert not problems, f"with OPA down these paths did not deny: {problems}"
        deadline = time.monotonic() + 15
        while True:
            again = await answers(svc.url)
            if again["check tools/call"][0] == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert again["check tools/call"][0] == 200, again


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
        ok, text, _ = await _call(f"{base}/mcp", sa_tokens["cluster-a"], "namespaces_list", {})
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
                in_flight = asyncio.create_task(_te_check(http, base, user))
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
