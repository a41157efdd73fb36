"""MCP backend versus the API server directly, side by side in one run.

Against a real testbed cluster (etcd + kube-apiserver + controller manager + scheduler, started
here with ``tests.testbed.cluster``) holding 200 pods, with one real service-account token:

* ``backend``: ``mcp-backend serve`` (its own process, default settings: stateless Streamable
  HTTP, JSON answers, so ``single_exchange`` answers the calls; the per-user call limit raised to
  the 16 clients, who share one token) driven the way a gateway drives
  it: JSON-RPC ``tools/call`` POSTs over one pooled aiohttp session of 16 connections, answers
  parsed with orjson: the same client machinery as the direct path, so the difference is the
  hop. This is the path the goals are judged on;
* ``backend_mcp_sdk_client``: a second, identical backend driven by 16 real MCP clients (the
  ``mcp`` package's Streamable HTTP client), whose own CPU cost (about 2 ms per call) lands in
  its figures: shown beside, not judged;
* ``backend_sdk_transport``: the ``backend`` path with ``single_exchange: false`` (the SDK's
  stateless transport for every call), for the side-by-side cost of that transport;
* ``direct``: 16 concurrent workers sending the same two queries straight to the API server with
  the same token over one pooled aiohttp session (Table request for the list, JSON for the get).

The queries: ``pods_list`` (server-side Table of all 200 pods, rendered) and ``resources_get``
(one Deployment as YAML).

Three phases, every path measured in each, alternating so drift hits all of them:

1. **paired sequential** (one client, no queueing): call i goes to every path back to back (the
   order rotates); the added latency of call i is the backend's time minus the direct time of
   the same query at the same moment, and its median per query is the pure cost of the hop.
   The CPU time of each call is split too: the backend process's, and this process's (the MCP
   client's against the direct client's), which shows how much of the hop is the backend;
2. **paced, 16 clients**: each query alone at a fixed offered rate (open loop, latency counted
   from the scheduled send time, see ``bench.load.paced_load``) below saturation, spread over
   the 16 MCP clients: the median added latency under concurrent use, per query;
3. **closed loop, 16 clients**: as fast as possible, both queries alternating; throughput and
   its ratio. On 2 shared cores this saturates the machine, so latencies there are queueing
   (Little's law: latency = 16 / throughput): the mean added latency is reported, and the
   median of the two-query mix (bimodal) is not a measure of the hop.

Reported per path: latency percentiles per phase and query, throughput, the backend's CPU time
per call and RSS (current and peak, from /proc), and the upstream TCP connections the backend
opened (its own connection counter, via /metrics) after all calls, against its pool size.

Goals (issue 4): median added latency <= 2 ms (judged per query in the paced 16-client phase;
the paired sequential figure is reported beside it); throughput >= 70 % of direct; backend RSS
<= 150 MB; upstream connections <= pool size after >= 1000 calls. Everything shares the 2-core
machine (API server, etcd, backend, load generator), so the load generator's own MCP client cost
is inside the backend numbers.

The stack (cluster, backends) is in ``bench.backend_stack``, the call functions in
``bench.backend_calls``, the three phases in ``bench.backend_phases``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from typing import Any

import aiohttp
import orjson

from bench.backend_calls import Call, check, closed_loop, jsonrpc_path, mcp_path
from bench.backend_phases import (
    PACED_SECONDS,
    QUERIES,
    SEQUENTIAL_CALLS,
    closed_rounds,
    paced_rounds,
    paired_sequential,
)
from bench.backend_stack import (
    CONCURRENCY,
    NS,
    PODS,
    POOL_SIZE,
    answered_by,
    metric,
    prepare_cluster,
    rss_kib,
    start_backend,
)
from bench.load import cpu_seconds
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster
from tests.testbed.control_plane.start import start_cluster
from tests.testbed.pki import CertificateAuthority

ROUNDS = 3
CALLS_PER_ROUND = 600  # per path and round: >= 1000 backend calls in total
# offered rate per query: this fraction of what one client achieves back to back on the slowest
# path (so no path is near saturation and latency is not queueing)
PACED_FRACTION = 0.5
SDK_CLIENT_SUFFIX = "_mcp_sdk_client"  # the backend path driven by the mcp package's client
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


async def _measure(
    cluster: Cluster,
    token: str,
    bases: dict[str, str],
    pids: dict[str, int],
    rounds: int,
    per_round: int,
) -> dict[str, Any]:
    import ssl

    ssl_ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {token}"}
    direct_http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_SIZE, ssl=ssl_ctx), headers=headers
    )
    list_url = f"{cluster.server}/api/v1/pods"
    get_url = f"{cluster.server}/apis/apps/v1/namespaces/{NS}/deployments/web"

    async def direct(i: int) -> None:
        # A client of the API server must parse the answer to use it, as the MCP client parses
        # the backend's: the direct path parses with orjson, the fastest parser around, so the
        # baseline is the strongest realistic one (aiohttp's default, the standard library, is
        # about twice as slow on the pod Table and would flatter the backend).
        url, accept = (list_url, TABLE_ACCEPT) if i % 2 == 0 else (get_url, "application/json")
        params = {"limit": "500"} if i % 2 == 0 else None
        async with direct_http.get(url, params=params, headers={"Accept": accept}) as resp:
            raw = await resp.read()
        body = orjson.loads(raw)
        ok = len(body["rows"]) >= PODS if i % 2 == 0 else body["metadata"]["name"] == "web"
        check(resp.status == 200 and ok, "direct call", body)

    stack = contextlib.AsyncExitStack()
    try:
        paths_: dict[str, Call] = {"direct": direct}
        for name, base in bases.items():
            make_path = mcp_path if name.endswith(SDK_CLIENT_SUFFIX) else jsonrpc_path
            paths_[name] = await make_path(stack, base, headers)
        # Warm-up: connections, discovery, first-call costs; not measured.
        for call in paths_.values():
            await closed_loop(call, 64)
        # This process holds the clients of every path; without this, the garbage collector
        # would rescan all of them whenever a big answer is parsed, and charge it to that path.
        gc.collect()
        gc.freeze()
        out: dict[str, Any] = {p: {} for p in paths_}
        for path, per_query in (await paired_sequential(paths_, pids)).items():
            out[path]["sequential"] = per_query
        rates = {
            q: max(
                5,
                int(PACED_FRACTION * 1000 / max(out[p]["sequential"][q]["p50_ms"] for p in paths_)),
            )
            for q in QUERIES
        }
        closed = await closed_rounds(paths_, rounds, per_round)
        paced = await paced_rounds(paths_, rounds, rates)
        for path in paths_:
            out[path]["closed_loop"] = closed[path]
            out[path]["paced"] = paced[path]
    finally:
        await stack.aclose()
        await direct_http.close()
    out["paced_rate_per_s"] = rates
    out["calls"] = {p: closed[p]["calls"] for p in paths_}
    paced_calls = rounds * sum(rates.values()) * PACED_SECONDS
    out["calls_including_warmup"] = {
        p: closed[p]["calls"] + 64 + SEQUENTIAL_CALLS + paced_calls for p in paths_
    }
    return out


def _compare(measured: dict[str, Any], path: str) -> dict[str, Any]:
    direct, backend = measured["direct"], measured[path]
    return {
        "added_latency_p50_ms_paced_16_clients": {
            q: round(backend["paced"][q]["p50_ms"] - direct["paced"][q]["p50_ms"], 3)
            for q in QUERIES
        },
        "added_latency_p50_ms_sequential_paired": {
            q: backend["sequential"][q]["added_p50_ms_paired"] for q in QUERIES
        },
        # where the added time goes, per call (sequential phase): the backend's own CPU, and the
        # MCP client's CPU minus the direct client's (both in this process)
        "backend_cpu_ms_per_call_sequential": {
            q: backend["sequential"][q]["backend_cpu_ms_per_call"] for q in QUERIES
        },
        "extra_client_cpu_ms_per_call_sequential": {
            q: round(
                backend["sequential"][q]["client_cpu_ms_per_call"]
                - direct["sequential"][q]["client_cpu_ms_per_call"],
                3,
            )
            for q in QUERIES
        },
        "added_latency_mean_ms_closed_loop": round(
            backend["closed_loop"]["all"]["mean_ms"] - direct["closed_loop"]["all"]["mean_ms"], 3
        ),
        "throughput_ratio": round(
            backend["closed_loop"]["throughput_per_s"] / direct["closed_loop"]["throughput_per_s"],
            3,
        ),
    }


async def run(soak: bool = False) -> dict[str, Any]:
    process.reap_stale()
    load_at_start = os.getloadavg()[0]
    run_dir = paths.new_run_dir("bench-backend")
    ca = CertificateAuthority(run_dir / "pki")
    cluster: Cluster | None = None
    backends: dict[str, tuple[process.ManagedProcess, str]] = {}
    try:
        cluster = await asyncio.to_thread(start_cluster, "bench-a", ca, run_dir, [])
        token = await prepare_cluster(cluster)
        # two identical backends (default settings: stateless, JSON responses), one per client
        backends["backend"] = start_backend(cluster, run_dir, "backend")
        backends[f"backend{SDK_CLIENT_SUFFIX}"] = start_backend(
            cluster, run_dir, "backend-sdk-client"
        )
        # the goal path's backend with single_exchange off: the SDK's transport for every call
        backends["backend_sdk_transport"] = start_backend(
            cluster, run_dir, "backend-sdk-transport", single_exchange=False
        )
        rounds = ROUNDS * (10 if soak else 1)
        pids = {n: p.proc.pid for n, (p, _) in backends.items() if p.proc is not None}
        cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
        measured = await _measure(
            cluster, token, {n: b for n, (_, b) in backends.items()}, pids, rounds, CALLS_PER_ROUND
        )
        cpu_used = {n: cpu_seconds(pid) - cpu_before[n] for n, pid in pids.items()}
        result: dict[str, Any] = {
            "setup": {
                "pods": PODS,
                "concurrency": CONCURRENCY,
                "pool_size": POOL_SIZE,
                "rounds": rounds,
                "calls_per_round": CALLS_PER_ROUND,
                "cpus": len(os.sched_getaffinity(0)),
                "load_average_1m_at_start": load_at_start,
                "load_average_1m_at_end": os.getloadavg()[0],
            },
            **measured,
        }
        for name, (proc, base) in backends.items():
            assert proc.proc is not None
            memory = rss_kib(proc.proc.pid)
            connections = await metric(base, "kmg_backend_upstream_connections_opened_total")
            summary = _compare(measured, name)
            summary["backend_memory_kib"] = memory
            summary["backend_cpu_ms_per_call"] = round(
                cpu_used[name] * 1000 / measured["calls_including_warmup"][name], 3
            )
            summary["upstream_connections_opened"] = int(connections)
            summary["mcp_posts_answered_by"] = await answered_by(base)
            summary["goals"] = {
                "added_p50_le_2ms": all(
                    v <= 2.0 for v in summary["added_latency_p50_ms_paced_16_clients"].values()
                ),
                "throughput_ratio_ge_0.7": summary["throughput_ratio"] >= 0.7,
                "backend_rss_le_150mb": memory["peak_kib"] <= 150 * 1024,
                "connections_le_pool": connections <= POOL_SIZE,
            }
            result[f"{name}_vs_direct"] = summary
        return result
    finally:
        for proc, _ in backends.values():
            proc.stop()
        if cluster is not None:
            cluster.stop()
