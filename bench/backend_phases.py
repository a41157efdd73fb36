"""The three measuring phases of the backend benchmark, every path measured in each: paired
sequential calls (one client, the added latency per call and who spends the CPU), closed-loop
rounds (throughput) and paced rounds (each query alone at a fixed rate, open loop).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.backend_calls import Call, closed_loop
from bench.load import cpu_seconds, paced_load, percentiles

SEQUENTIAL_CALLS = 300  # paired: each call to every path back to back
PACED_SECONDS = 6  # per query and path and round
QUERIES = ("pods_list", "resources_get")


async def paired_sequential(
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


async def closed_rounds(
    paths_: dict[str, Call], rounds: int, per_round: int
) -> dict[str, dict[str, Any]]:
    samples: dict[str, dict[str, list[float]]] = {
        p: {"all": [], **{q: [] for q in QUERIES}} for p in paths_
    }
    wall = dict.fromkeys(paths_, 0.0)
    calls = dict.fromkeys(paths_, 0)
    for _ in range(rounds):
        for path, call in paths_.items():
            lat, kinds, seconds = await closed_loop(call, per_round)
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


async def paced_rounds(
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
