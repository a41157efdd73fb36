"""The backend's cost of tracing (issue 16): throughput with tracing off, at 1 % and at 100 %
sampling, side by side in one run.

A real testbed cluster (its API server without tracing, so only the backend's cost differs) with
a Deployment, the real Jaeger as the collector, and three identical ``mcp-backend serve``
processes that differ only in ``tracing``: ``off`` (no endpoint), ``sampled_1pct``
(``sampling_ratio: 0.01``) and ``sampled_100pct`` (``1.0``). The calls carry no ``traceparent``:
each backend decides the sampling itself, as behind a gateway that does not trace. Two calls,
measured apart: ``resources_get`` of one Deployment (a cheap call, where the span cost weighs the
most) and ``pods_list`` (a Table of 200 pods rendered: a typical heavier call).

Each round runs every path in turn (order rotating) as a closed loop of 16 workers; reported per
path: throughput (median over the rounds), its ratio to ``off``, and the backend process's CPU
time per call. Goals: at 100 % at most 10 % lower throughput than off, at 1 % at most 2 % lower.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from typing import Any

import aiohttp
import orjson

from bench.load import cpu_seconds
from bench.scenario_backend import (
    CONCURRENCY,
    GET_ARGS,
    RPC_HEADERS,
    Call,
    _check,
    _closed_loop,
    _prepare_cluster,
    _start_backend,
)
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster, start_cluster
from tests.testbed.jaeger import Jaeger
from tests.testbed.pki import CertificateAuthority

ROUNDS = 5
CALLS_PER_ROUND = 1500
RATIOS = {"off": None, "sampled_1pct": 0.01, "sampled_100pct": 1.0}


QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "resources_get": ("resources_get", GET_ARGS),
    "pods_list": ("pods_list", {}),
}


async def _path(stack: contextlib.AsyncExitStack, base: str, token: str, query: str) -> Call:
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            headers={"Authorization": f"Bearer {token}", **RPC_HEADERS},
        )
    )
    url = f"{base}/mcp"
    tool, arguments = QUERIES[query]

    async def call(i: int) -> None:
        request = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        async with http.post(url, data=orjson.dumps(request)) as resp:
            answer = orjson.loads(await resp.read())
        result = answer.get("result") or {}
        _check(resp.status == 200 and not result.get("isError"), tool, answer)

    return call


async def _measure(
    bases: dict[str, str], pids: dict[str, int], token: str, query: str
) -> dict[str, dict[str, Any]]:
    throughput: dict[str, list[float]] = {name: [] for name in bases}
    cpu: dict[str, float] = dict.fromkeys(bases, 0.0)
    calls = dict.fromkeys(bases, 0)
    async with contextlib.AsyncExitStack() as stack:
        paths_ = {name: await _path(stack, base, token, query) for name, base in bases.items()}
        for call in paths_.values():  # warm-up: connections, discovery, first spans
            await _closed_loop(call, 200)
        names = list(paths_)
        for round_ in range(ROUNDS):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                before = cpu_seconds(pids[name])
                _, _, wall = await _closed_loop(paths_[name], CALLS_PER_ROUND)
                cpu[name] += cpu_seconds(pids[name]) - before
                calls[name] += CALLS_PER_ROUND
                throughput[name].append(CALLS_PER_ROUND / wall)
    return {
        name: {
            "throughput_per_s_median": round(statistics.median(rates), 1),
            "throughput_per_s_rounds": [round(r, 1) for r in rates],
            "backend_cpu_ms_per_call": round(cpu[name] * 1000 / calls[name], 3),
        }
        for name, rates in throughput.items()
    }


async def run(soak: bool = False) -> dict[str, Any]:
    process.reap_stale()
    load_at_start = os.getloadavg()[0]
    run_dir = paths.new_run_dir("bench-tracing")
    ca = CertificateAuthority(run_dir / "pki")
    cluster: Cluster | None = None
    jaeger = Jaeger(run_dir)
    backends: dict[str, tuple[process.ManagedProcess, str]] = {}
    try:
        jaeger.start()
        cluster = await asyncio.to_thread(start_cluster, "bench-tracing", ca, run_dir, [])
        token = await _prepare_cluster(cluster)
        for name, ratio in RATIOS.items():
            extra: dict[str, Any] = {}
            if ratio is not None:
                extra["tracing"] = {
                    "endpoint": jaeger.otlp_http_traces_url,
                    "sampling_ratio": ratio,
                    "service_name": f"bench-{name}",
                }
            backends[name] = _start_backend(cluster, run_dir, f"backend-{name}", **extra)
        pids = {n: p.proc.pid for n, (p, _) in backends.items() if p.proc is not None}
        bases = {n: b for n, (_, b) in backends.items()}
        measured: dict[str, dict[str, Any]] = {}
        for query in QUERIES:
            per_path = await _measure(bases, pids, token, query)
            off = per_path["off"]["throughput_per_s_median"]
            for figures in per_path.values():
                figures["throughput_ratio_to_off"] = round(
                    figures["throughput_per_s_median"] / off, 3
                )
            measured[query] = per_path
        await asyncio.sleep(2)  # the batch exporters' last flush
        traced = jaeger.services()
        return {
            "setup": {
                "calls": "resources_get (one Deployment), pods_list (200 pods)",
                "concurrency": CONCURRENCY,
                "rounds": ROUNDS,
                "calls_per_round": CALLS_PER_ROUND,
                "cpus": len(os.sched_getaffinity(0)),
                "load_average_1m_at_start": load_at_start,
                "load_average_1m_at_end": os.getloadavg()[0],
                "services_seen_by_jaeger": sorted(traced),
            },
            **measured,
            "goals": {
                f"{query}_{path}_ratio_ge_{goal}": per_path[path]["throughput_ratio_to_off"] >= goal
                for query, per_path in measured.items()
                for path, goal in (("sampled_100pct", 0.90), ("sampled_1pct", 0.98))
            },
        }
    finally:
        for proc, _ in backends.values():
            proc.stop()
        if cluster is not None:
            cluster.stop()
        jaeger.stop()
