"""Load generation and statistics shared by the benchmark scenarios."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """count, p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"count": 0}

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

    return {
        "count": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def paced_load(
    call: Callable[[], Awaitable[bool]], rate: int, seconds: int, *, samples: bool = False
) -> dict[str, Any]:
    """Open loop: request i is sent at t0 + i/rate; latency counted from the scheduled time, so a
    slow server cannot hide its queueing (no coordinated omission). ``samples`` adds the raw
    latencies (seconds) as ``samples_s``."""
    latencies: list[float] = []
    errors = 0
    total = rate * seconds
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ok = await call()
        latencies.append(loop.time() - scheduled)
        errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "target_rate": rate,
        "achieved_rate": round(total / elapsed, 1),
        "errors": errors,
        **percentiles(latencies),
    }
    if samples:
        result["samples_s"] = latencies
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
