"""Token exchange: warm cache through our service versus exchanging at Keycloak on every call.

One run, side by side, against the testbed's real Keycloak:

1. ``service_warm_paced``: ext_authz ``/check`` requests to our service (a separate process,
   started with its CLI) at a fixed 500 requests/s, every one a cache hit; latency percentiles.
2. ``service_warm_max``: the same, closed loop with ``concurrency`` workers: maximum throughput.
3. ``keycloak_every_call_max``: the reference behaviour (the gateway's demo AuthPolicy): a
   standard token exchange at Keycloak for every request, same concurrency, same duration.

Goals (issue 5): warm-cache p99 <= 2 ms at 500 req/s; >= 10x the throughput of (3).
The load generator shares the 2-core machine with the service and Keycloak, so its own overhead
is inside the client-side numbers. To tell the service's cost apart from the machine's load, the
result also carries the service's own CPU time per request (``/proc``) and its server-side
latency histogram (``http_request_duration_seconds``) over the paced phase.
Requests to the service go through a minimal keep-alive HTTP/1.1 client on asyncio streams (a
few tens of microseconds per request) instead of a full client library.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.load import cpu_seconds, paced_load, percentiles
from tests.gateway_plugins.token_exchange.running import CALLER_HEADERS, service_settings
from tests.testbed import keycloak as kc
from tests.testbed import paths, process
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP, new_plan
from tests.testbed.pki import CertificateAuthority
from tests.testbed.ports import free_port

PACED_RATE = 500
PACED_SECONDS = 10
MAX_SECONDS = 8
CONCURRENCY = 16
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


class KeepAliveClient:
    """POST ``path`` with fixed headers over a pool of persistent HTTP/1.1 connections."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], size: int):
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._host, self._port, self._size = host, port, size
        self._pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def open(self) -> None:
        for _ in range(self._size):
            self._pool.put_nowait(await asyncio.open_connection(self._host, self._port))

    async def close(self) -> None:
        while not self._pool.empty():
            _, writer = self._pool.get_nowait()
            writer.close()

    async def __call__(self) -> bool:
        reader, writer = await self._pool.get()
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            return status == 200
        finally:
            self._pool.put_nowait((reader, writer))


def _check_histogram(metrics: str) -> dict[str, float]:
    """Cumulative bucket counts of the service's /check latency histogram, by upper bound."""
    buckets: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("http_request_duration_seconds_bucket{") and "/check" in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if not total:
        return {"count": 0}
    share = {
        f"le_{le}s": round((after.get(le, 0.0) - before.get(le, 0.0)) / total, 4)
        for le in ("0.0005", "0.001", "0.002", "0.005")
    }
    return {"count": int(total), "share_of_requests": share}


async def _closed(
    call: Callable[[], Awaitable[bool]], workers: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ok = await call()
            latencies.append(time.perf_counter() - t)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": workers,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "errors": errors,
        **percentiles(latencies),
    }


def _start_keycloak(run_dir: Path) -> kc.Keycloak:
    ca = CertificateAuthority(run_dir / "pki")
    server = kc.Keycloak(
        run_dir=run_dir, plan=new_plan(), tls=ca.issue("keycloak"), ca_file=ca.cert
    )
    print("[bench] token_exchange: starting Keycloak (about a minute)", flush=True)
    server.start()
    return server


def _start_service(keycloak: kc.Keycloak, run_dir: Path) -> tuple[process.ManagedProcess, str, int]:
    settings = service_settings(keycloak, run_dir / "token-exchange-secrets")
    config = run_dir / "token-exchange.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    port = free_port()
    proc = process.ManagedProcess(
        "token-exchange",
        [
            sys.executable,
            "-m",
            "gateway_plugins.token_exchange",
            "serve",
            "--config",
            config,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        run_dir / "token-exchange.log",
        cwd=paths.REPO_ROOT,
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: process.http_ok(f"{url}/readyz"), timeout=30, what="ready (/readyz)")
    return proc, url, port


async def _measure(keycloak: kc.Keycloak, url: str, port: int, pid: int) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    user_token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    check_headers = {
        "authorization": f"Bearer {user_token}",
        "x-mcp-servername": BACKEND_AUDIENCE,
        "x-mcp-method": "tools/call",
        **CALLER_HEADERS,  # the service answers only the gateway (caller_auth)
    }
    connector = aiohttp.TCPConnector(limit=64, ssl=keycloak.ssl_context())
    via_service = KeepAliveClient("127.0.0.1", port, "/check/mcp", check_headers, CONCURRENCY)
    await via_service.open()
    async with aiohttp.ClientSession(connector=connector) as http:

        async def metrics_text() -> str:
            async with http.get(f"{url}/metrics") as resp:
                return await resp.text()

        form = {
            "grant_type": GRANT,
            "subject_token": user_token,
            "subject_token_type": ACCESS,
            "audience": BACKEND_AUDIENCE,
        }
        basic = aiohttp.BasicAuth(keycloak.gateway_client_id, keycloak.gateway_client_secret)

        async def keycloak_every_call() -> bool:
            async with http.post(keycloak.token_url(REALM_MCP), data=form, auth=basic) as resp:
                await resp.read()
                return resp.status == 200

        assert await via_service(), "warm-up call through the service failed"
        assert await keycloak_every_call(), "direct exchange at Keycloak failed"
        # Warm both paths (JIT, connection pools) before measuring.
        await _closed(via_service, CONCURRENCY, 1.0)
        await _closed(keycloak_every_call, CONCURRENCY, 2.0)

        hist_before, cpu_before = _check_histogram(await metrics_text()), cpu_seconds(pid)
        paced = await paced_load(via_service, PACED_RATE, PACED_SECONDS)
        cpu_paced = cpu_seconds(pid) - cpu_before
        paced["server_side"] = _server_side(hist_before, _check_histogram(await metrics_text()))
        paced["service_cpu_us_per_request"] = round(cpu_paced / paced["count"] * 1e6, 1)
        cpu_before = cpu_seconds(pid)
        warm_max = await _closed(via_service, CONCURRENCY, MAX_SECONDS)
        warm_max["service_cpu_us_per_request"] = round(
            (cpu_seconds(pid) - cpu_before) / max(warm_max["count"], 1) * 1e6, 1
        )
        reference = await _closed(keycloak_every_call, CONCURRENCY, MAX_SECONDS)
        metrics = await metrics_text()
    await via_service.close()
    sts_calls = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("token_exchange_sts_calls_total{")
    )
    ratio = warm_max["throughput_rps"] / max(reference["throughput_rps"], 0.001)
    return {
        "service_warm_paced": paced,
        "service_warm_max": warm_max,
        "keycloak_every_call_max": reference,
        "throughput_ratio_warm_vs_every_call": round(ratio, 1),
        "service_keycloak_calls_total": sts_calls,
        "load_average_1m": {"start": load_at_start, "end": os.getloadavg()[0]},
        "goals": {
            "warm_p99_le_2ms_at_500rps": paced["p99_ms"] <= 2.0 and paced["errors"] == 0,
            "throughput_ratio_ge_10": ratio >= 10,
        },
    }


async def run(soak: bool = False) -> dict[str, Any]:
    run_dir = paths.new_run_dir("bench-token-exchange")
    keycloak = await asyncio.to_thread(_start_keycloak, run_dir)
    service: process.ManagedProcess | None = None
    try:
        started, url, port = await asyncio.to_thread(_start_service, keycloak, run_dir)
        service = started
        assert started.proc is not None
        result = await _measure(keycloak, url, port, started.proc.pid)
        result["keycloak_rss_mib"] = keycloak.rss_mib()
        result["run_dir"] = str(run_dir)
        return result
    finally:
        if service is not None:
            service.stop()
        keycloak.stop()
