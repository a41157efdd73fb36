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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import yaml
from kubernetes_asyncio import client as k8s
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench.load import cpu_seconds, paced_load, percentiles
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster
from tests.testbed.control_plane.start import start_cluster
from tests.testbed.pki import CertificateAuthority
from tests.testbed.ports import free_port

PODS = 200
CONCURRENCY = 16
POOL_SIZE = 16
ROUNDS = 3
CALLS_PER_ROUND = 600  # per path and round: >= 1000 backend calls in total
SEQUENTIAL_CALLS = 300  # paired: each call to every path back to back
PACED_SECONDS = 6  # per query and path and round
# offered rate per query: this fraction of what one client achieves back to back on the slowest
# path (so no path is near saturation and latency is not queueing)
PACED_FRACTION = 0.5
QUERIES = ("pods_list", "resources_get")
SDK_CLIENT_SUFFIX = "_mcp_sdk_client"  # the backend path driven by the mcp package's client
NS = "bench"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

Call = Callable[[int], Awaitable[None]]


def _check(ok: bool, what: str, answer: Any) -> None:
    if not ok:
        raise RuntimeError(f"{what} gave a wrong answer: {str(answer)[:300]}")


async def _closed_loop(
    call: Call, total: int, concurrency: int = CONCURRENCY
) -> tuple[list[float], list[int], float]:
    """Run ``total`` calls with ``concurrency`` workers; per-call latency, kind, wall time."""
    latencies: list[float] = []
    kinds: list[int] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)
            kinds.append(i % 2)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, kinds, time.perf_counter() - started


async def _prepare_cluster(cluster: Cluster) -> str:
    """Namespace with a 200-replica Deployment (pods stay Pending: no nodes), and a view token."""
    async with cluster.admin_client() as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        await core.create_namespace({"metadata": {"name": NS}})  # type: ignore[arg-type]
        await apps.create_namespaced_deployment(
            NS,
            {  # type: ignore[arg-type]
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": PODS,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "main", "image": "pause:3.10"}]},
                    },
                },
            },
        )
        deadline = time.monotonic() + 180
        while True:
            pods = await core.list_namespaced_pod(NS, label_selector="app=web")
            if len(pods.items) >= PODS:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(pods.items)} of {PODS} pods created in 180 s")
            await asyncio.sleep(0.5)
    return await cluster.service_account_token(
        name="bench-viewer", cluster_role="view", cluster_wide=True
    )


def _start_backend(
    cluster: Cluster, run_dir: Path, name: str, **extra: Any
) -> tuple[process.ManagedProcess, str]:
    port = free_port()
    config = run_dir / f"{name}.yaml"
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "pool_size": POOL_SIZE,
        # One token drives all CONCURRENCY clients: let them all run (the per-user limit is
        # measured by scenario_exhaustion).
        "max_concurrent_calls_per_user": CONCURRENCY,
        "log_level": "WARNING",
        "clusters": [
            {
                "name": cluster.name,
                "server": cluster.server,
                "ca_file": str(cluster.ca_file),
                "default": True,
            }
        ],
        **extra,
    }
    config.write_text(yaml.safe_dump(settings))
    proc = process.ManagedProcess(
        name,
        [sys.executable, "-m", "mcp_backend", "serve", "--config", str(config)],
        run_dir / f"{name}.log",
        cwd=paths.REPO_ROOT,
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: process.http_ok(f"{base}/readyz"), timeout=30, what="ready")
    return proc, base


def _rss_kib(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "peak_kib": int(fields["VmHWM"].split()[0])}


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def _answered_by(base: str) -> dict[str, int]:
    """POSTs to /mcp per answering path (``kmg_backend_mcp_requests_total{path}``)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    prefix = 'kmg_backend_mcp_requests_total{path="'
    return {
        line[len(prefix) :].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    }


GET_ARGS = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": NS}
RPC_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _jsonrpc_path(
    stack: contextlib.AsyncExitStack, base: str, headers: dict[str, str]
) -> Call:
    """A call function posting MCP ``tools/call`` requests to the backend at ``base`` over one
    pooled aiohttp session, parsing the JSON-RPC answers with orjson: the same client machinery
    as the direct path, as a gateway in front of the backend sends them (stateless mode)."""
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY), headers={**headers, **RPC_HEADERS}
        )
    )
    url = f"{base}/mcp"

    async def via_backend(i: int) -> None:
        tool, args = ("pods_list", {}) if i % 2 == 0 else ("resources_get", GET_ARGS)
        request = {"jsonrpc": "2.0", "id": i, "method": "tools/call"}
        request["params"] = {"name": tool, "arguments": args}
        async with http.post(url, data=orjson.dumps(request)) as resp:
            raw = await resp.read()
        answer = orjson.loads(raw)
        result = answer.get("result") or {}
        ok = resp.status == 200 and not result.get("isError") and bool(result.get("content"))
        if i % 2 == 0:
            ok = ok and (result.get("structuredContent") or {}).get("count", 0) >= PODS
        _check(ok, tool, answer)

    return via_backend


async def _mcp_path(stack: contextlib.AsyncExitStack, base: str, headers: dict[str, str]) -> Call:
    """A call function driving CONCURRENCY real MCP clients of the backend at ``base``."""
    clients: list[Client] = []
    for _ in range(CONCURRENCY):
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
        client = await stack.enter_async_context(
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy", cache=None
            )
        )
        clients.append(client)
    next_client = iter(range(10**9))

    async def via_backend(i: int) -> None:
        client = clients[next(next_client) % CONCURRENCY]
        if i % 2 == 0:
            result = await client.call_tool("pods_list", {})
            _check(
                not result.is_error and result.structured_content["count"] >= PODS,
                "pods_list",
                result,
            )
        else:
            result = await client.call_tool("resources_get", GET_ARGS)
            _check(not result.is_error, "resources_get", result)

    return via_backend


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
        _check(resp.status == 200 and ok, "direct call", body)

    stack = contextlib.AsyncExitStack()
    try:
        paths_: dict[str, Call] = {"direct": direct}
        for name, base in bases.items():
            make_path = _mcp_path if name.endswith(SDK_CLIENT_SUFFIX) else _jsonrpc_path
            paths_[name] = await make_path(stack, base, headers)
        # Warm-up: connections, discovery, first-call costs; not measured.
        for call in paths_.values():
            await _closed_loop(call, 64)
        # This process holds the clients of every path; without this, the garbage collector
        # would rescan all of them whenever a big answer is parsed, and charge it to that path.
        gc.collect()
        gc.freeze()
        out: dict[str, Any] = {p: {} for p in paths_}
        for path, per_query in (await _paired_sequential(paths_, pids)).items():
            out[path]["sequential"] = per_query
        rates = {
            q: max(
                5,
                int(PACED_FRACTION * 1000 / max(out[p]["sequential"][q]["p50_ms"] for p in paths_)),
            )
            for q in QUERIES
        }
        closed = await _closed_rounds(paths_, rounds, per_round)
        paced = await _paced_rounds(paths_, rounds, rates)
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


async def _paired_sequential(
    paths_: dict[str, Call], pids: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Call i on every path back to back (rotating order); per path and query: latency
    percentiles, for the non-direct paths the median of (path - direct) over the pairs, and the
    CPU time per call of the client (this process) and of the backend serving the path."""
    names = list(paths_)
    times: dict[str, list[float]] = {p: [] for p in names}
    client_cpu: dict[str, list[float]] = {p: [0.0, 0.0] for p in names}
    server_cpu: dict[str, list[float]] = {p: [0.0, 0.0] for p in names}
    for i in range(SEQUENTIAL_CALLS):
        shift = i % len(names)
        for path in names[shift:] + names[:shift]:
            pid = pids.get(path)
            server_before = cpu_seconds(pid) if pid else 0.0
            cpu_before = time.process_time()
            started = time.perf_counter()
            await paths_[path](i)
            times[path].append(time.perf_counter() - started)
            client_cpu[path][i % 2] += time.process_time() - cpu_before
            if pid:
                server_cpu[path][i % 2] += cpu_seconds(pid) - server_before
    per_query_calls = SEQUENTIAL_CALLS / len(QUERIES)
    out: dict[str, dict[str, Any]] = {}
    for path in names:
        out[path] = {}
        for q, query in enumerate(QUERIES):
            own = times[path][q :: len(QUERIES)]
            out[path][query] = percentiles(own)
            out[path][query]["client_cpu_ms_per_call"] = round(
                client_cpu[path][q] * 1000 / per_query_calls, 3
            )
            if path != "direct":
                base = times["direct"][q :: len(QUERIES)]
                diffs = [a - b for a, b in zip(own, base, strict=True)]
                out[path][query]["added_p50_ms_paired"] = round(statistics.median(diffs) * 1000, 3)
                out[path][query]["backend_cpu_ms_per_call"] = round(
                    server_cpu[path][q] * 1000 / per_query_calls, 3
                )
    return out


async def _closed_rounds(
    paths_: dict[str, Call], rounds: int, per_round: int
) -> dict[str, dict[str, Any]]:
    samples: dict[str, dict[str, list[float]]] = {
        p: {"all": [], **{q: [] for q in QUERIES}} for p in paths_
    }
    wall = dict.fromkeys(paths_, 0.0)
    calls = dict.fromkeys(paths_, 0)
    for _ in range(rounds):
        for path, call in paths_.items():
            lat, kinds, seconds = await _closed_loop(call, per_round)
            wall[path] += seconds
            calls[path] += len(lat)
            samples[path]["all"] += lat
            for value, kind in zip(lat, kinds, strict=True):
                samples[path][QUERIES[kind]].append(value)
    return {
        path: {
            **{q: percentiles(v) for q, v in samples[path].items()},
            "throughput_per_s": round(calls[path] / wall[path], 1),
            "calls": calls[path],
        }
        for path in paths_
    }


async def _paced_rounds(
    paths_: dict[str, Call], rounds: int, rates: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Each query alone at its rate on every path, ``rounds`` times (alternating)."""
    latencies: dict[str, dict[str, list[float]]] = {p: {q: [] for q in QUERIES} for p in paths_}
    for _ in range(rounds):
        for q, query in enumerate(QUERIES):
            for path, call in paths_.items():

                async def one(call: Call = call, q: int = q) -> bool:
                    await call(q)
                    return True

                result = await paced_load(one, rates[query], PACED_SECONDS, samples=True)
                latencies[path][query] += result["samples_s"]
    return {p: {q: percentiles(v) for q, v in per.items()} for p, per in latencies.items()}


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
        token = await _prepare_cluster(cluster)
        # two identical backends (default settings: stateless, JSON responses), one per client
        backends["backend"] = _start_backend(cluster, run_dir, "backend")
        backends[f"backend{SDK_CLIENT_SUFFIX}"] = _start_backend(
            cluster, run_dir, "backend-sdk-client"
        )
        # the goal path's backend with single_exchange off: the SDK's transport for every call
        backends["backend_sdk_transport"] = _start_backend(
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
            memory = _rss_kib(proc.proc.pid)
            connections = await _metric(base, "kmg_backend_upstream_connections_opened_total")
            summary = _compare(measured, name)
            summary["backend_memory_kib"] = memory
            summary["backend_cpu_ms_per_call"] = round(
                cpu_used[name] * 1000 / measured["calls_including_warmup"][name], 3
            )
            summary["upstream_connections_opened"] = int(connections)
            summary["mcp_posts_answered_by"] = await _answered_by(base)
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
