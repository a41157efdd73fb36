"""Soak: mixed traffic at a fixed rate through the whole local gateway (``make soak``).

Starts the full stack (``tests.testbed.mcp_gateway.start.start_stack``: Keycloak, clusters A and
B, OPA, our services, the real MCP Gateway broker/router, Envoy) and sends, for
``KMG_SOAK_SECONDS`` (default 600; ``--soak`` or not, the scenario is the same), requests at a
fixed rate (``KMG_SOAK_RATE`` per second, default 8) from two real users (``mcp``: every tool,
``viewer``: read-only tools), each in one gateway session (the broker's ``Mcp-Session-Id``),
round robin over:

* ``tools/list`` (policy's signed list, the broker's aggregated and filtered list),
* ``a_pods_list_in_namespace`` on cluster A (router, token exchange, policy, backend A, API
  server A),
* ``b_resources_get`` of a Deployment on cluster B (backend B, cross-domain exchange through the
  facade),
* ``a_pods_delete`` of a missing pod by ``viewer`` (expected: 403 from the policy).

Each answer is checked against what that user must get; anything else is an error. One fault is
injected at mid-run: the policy's OPA server is stopped for ``KMG_SOAK_FAULT_SECONDS`` (default
5) then started again; answers in that window (plus 5 s to recover) count as injected, not as
errors. User tokens are refreshed every minute (Keycloak's access tokens live 5 minutes).

Reported: per request kind count / errors / p50 / p99; overall error rate; RSS (KiB) and open
file descriptors of every process (each service, the broker/router, Envoy, OPA) at start (after a
warm-up), every ``seconds/20`` during the run and at the end (after 3 s idle), with growth; and
the goals with pass/fail: no error except injected ones, RSS growth < 10 % (end vs start), no
descriptor growth (end <= the highest count of the first half: connection pools fill early, a
leak keeps growing). OPA is excluded from the growth goals (the fault restarts it).
JSON in ``bench/results/soak.json``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.e2e.mcp_http import PROTOCOL, open_session, result_of
from tests.testbed import paths, process
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway
from tests.testbed.mcp_gateway.start import start_stack

DEFAULT_SECONDS = 600
WARMUP_SECONDS = 20
TOKEN_REFRESH_S = 60
ACCEPT = "application/json, text/event-stream"


@dataclass
class Kind:
    name: str
    user: str
    body: dict[str, Any]
    check: Callable[[httpx2.Response], bool]
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    injected: int = 0
    error_samples: list[str] = field(default_factory=list)


def _call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


def _tool_ok(resp: httpx2.Response, needle: str) -> bool:
    if resp.status_code != 200:
        return False
    result = result_of(resp)
    text = "".join(c.get("text", "") for c in result.get("content", []))
    return not result.get("isError") and needle in text


def _listed(resp: httpx2.Response) -> set[str]:
    return {t["name"] for t in result_of(resp)["tools"]} if resp.status_code == 200 else set()


def _kinds(gateway: LocalGateway) -> list[Kind]:
    b_deploy = f"web-{gateway.cluster_b.name}"
    return [
        Kind(
            "tools_list_viewer",
            "viewer",
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            lambda r: (
                gateway.tool("pods_delete") not in _listed(r)
                and gateway.tool("pods_list") in _listed(r)
            ),
        ),
        Kind(
            "pods_list_cluster_a_mcp",
            "mcp",
            _call(gateway.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE),
            lambda r: _tool_ok(r, f"web-{gateway.cluster_a.name}"),
        ),
        Kind(
            "resources_get_cluster_b_mcp",
            "mcp",
            _call(
                gateway.tool("resources_get", "cluster-b"),
                apiVersion="apps/v1",
                kind="Deployment",
                name=b_deploy,
                namespace=DEMO_NAMESPACE,
            ),
            lambda r: _tool_ok(r, b_deploy),
        ),
        Kind(
            "pods_delete_denied_viewer",
            "viewer",
            _call(gateway.tool("pods_delete"), name="soak-no-such-pod", namespace=DEMO_NAMESPACE),
            lambda r: r.status_code == 403,
        ),
        Kind(
            "pods_list_cluster_a_viewer",
            "viewer",
            _call(gateway.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE),
            lambda r: _tool_ok(r, f"web-{gateway.cluster_a.name}"),
        ),
    ]


def _proc_stats(pid: int) -> dict[str, int]:
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"rss_kib": rss, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _pids(gateway: LocalGateway) -> dict[str, int]:
    pids: dict[str, int] = {}
    for name, svc in gateway.services.items():
        if svc.proc is not None and svc.proc.proc is not None:
            pids[name] = svc.proc.proc.pid
    for name, owner in (("envoy", gateway.envoy), ("opa", gateway.opa)):
        managed = getattr(owner, "_proc", None)
        if managed is not None and managed.proc is not None:
            pids[name] = managed.proc.pid
    return pids


def _resources(gateway: LocalGateway) -> dict[str, dict[str, int]]:
    out = {}
    for name, pid in _pids(gateway).items():
        try:
            out[name] = _proc_stats(pid)
        except OSError:
            continue
    return out


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return (
        round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else 0.0
    )


class Tokens:
    """Fresh user tokens (refreshed in a thread every minute)."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.gateway = gateway
        self.values = {u: gateway.user_token(u) for u in ("mcp", "viewer")}
        self.fetched = time.monotonic()

    async def refresh_if_due(self) -> None:
        if time.monotonic() - self.fetched >= TOKEN_REFRESH_S:
            self.fetched = time.monotonic()
            for user in self.values:
                self.values[user] = await asyncio.to_thread(self.gateway.user_token, user)


async def _drive(
    gateway: LocalGateway,
    seconds: float,
    rate: float,
    fault_at: float | None,
    fault_seconds: float,
) -> dict[str, Any]:
    kinds = _kinds(gateway)
    tokens = Tokens(gateway)
    sessions = {u: await open_session(gateway.mcp_url, t) for u, t in tokens.values.items()}
    ids = itertools.count(1)  # the broker refuses a request id already in flight in a session
    fault_window: list[float] = []  # [start, end] in monotonic time, end includes recovery
    cycle = itertools.cycle(kinds)
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    fault_task: asyncio.Task[None] | None = None

    async def inject() -> None:
        opa = gateway.opa
        t0 = time.monotonic()
        fault_window[:] = [t0, t0 + fault_seconds + 60]
        await asyncio.to_thread(opa.stop)
        await asyncio.sleep(fault_seconds)
        await asyncio.to_thread(opa.start)
        fault_window[1] = time.monotonic() + 5  # recovery allowance

    async def one(http: httpx2.AsyncClient, kind: Kind) -> None:
        t0 = time.monotonic()
        try:
            resp = await http.post(
                gateway.mcp_url,
                json={**kind.body, "id": next(ids)},
                headers={
                    "Authorization": f"Bearer {tokens.values[kind.user]}",
                    "Accept": ACCEPT,
                    "Mcp-Session-Id": sessions[kind.user],
                    "MCP-Protocol-Version": PROTOCOL,
                },
            )
            ok = kind.check(resp)
            detail = f"HTTP {resp.status_code}: {resp.text[:160]}"
        except (httpx2.HTTPError, ValueError, KeyError, TypeError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
        t1 = time.monotonic()
        kind.latencies.append(t1 - t0)
        if ok:
            return
        if fault_window and fault_window[0] <= t0 <= fault_window[1]:
            kind.injected += 1
        else:
            kind.errors += 1
            if len(kind.error_samples) < 5:
                kind.error_samples.append(detail)

    async with httpx2.AsyncClient(timeout=60) as http:
        interval = 1.0 / rate
        sent = 0
        while (now := time.monotonic()) - started < seconds:
            if fault_at is not None and fault_task is None and now - started >= fault_at:
                fault_task = asyncio.create_task(inject())
            await tokens.refresh_if_due()
            task = asyncio.create_task(one(http, next(cycle)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent * interval - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
        if fault_task is not None:
            await fault_task
    elapsed = time.monotonic() - started
    per_kind = {
        k.name: {
            "count": len(k.latencies),
            "errors": k.errors,
            "injected_fault_failures": k.injected,
            "p50_ms": _pct(k.latencies, 0.50),
            "p99_ms": _pct(k.latencies, 0.99),
            "error_samples": k.error_samples,
        }
        for k in kinds
    }
    all_lat = [x for k in kinds for x in k.latencies]
    total = len(all_lat)
    errors = sum(k.errors for k in kinds)
    return {
        "requests": total,
        "achieved_rate_per_s": round(total / elapsed, 2),
        "errors": errors,
        "error_rate": round(errors / total, 5) if total else None,
        "injected_fault_failures": sum(k.injected for k in kinds),
        "p50_ms": _pct(all_lat, 0.50),
        "p99_ms": _pct(all_lat, 0.99),
        "mean_ms": round(statistics.fmean(all_lat) * 1000, 2) if all_lat else None,
        "per_kind": per_kind,
    }


def _growth(start: dict[str, dict[str, int]], end: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, before in start.items():
        after = end.get(name)
        if after is None:
            continue
        out[name] = {
            "rss_kib_start": before["rss_kib"],
            "rss_kib_end": after["rss_kib"],
            "rss_growth_pct": round((after["rss_kib"] / before["rss_kib"] - 1) * 100, 2)
            if before["rss_kib"]
            else None,
            "open_fds_start": before["open_fds"],
            "open_fds_end": after["open_fds"],
        }
    return out


async def _sample(gateway: LocalGateway, out: list[dict[str, Any]], every_s: float) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        out.append({"t_s": round(time.monotonic() - started, 1), "processes": _resources(gateway)})


async def _warm_up(gateway: LocalGateway) -> None:
    """A few rounds of every kind so caches, pools and discovery exist before the baseline."""
    await _drive(gateway, WARMUP_SECONDS, 5, None, 0)


async def run(soak: bool = False) -> dict[str, Any]:
    seconds = float(os.environ.get("KMG_SOAK_SECONDS", DEFAULT_SECONDS))
    rate = float(os.environ.get("KMG_SOAK_RATE", 8))
    fault_seconds = float(os.environ.get("KMG_SOAK_FAULT_SECONDS", 5))
    run_dir = paths.new_run_dir("bench-soak")
    print(f"[soak] starting the stack in {run_dir}", flush=True)
    gateway = await asyncio.to_thread(
        start_stack, run_dir, progress=lambda m: print(f"[soak] {m}", flush=True)
    )
    try:
        await _warm_up(gateway)
        start = _resources(gateway)
        print(f"[soak] {seconds:.0f}s at {rate}/s (OPA fault at mid-run)", flush=True)
        samples: list[dict[str, Any]] = []
        sampler = asyncio.create_task(_sample(gateway, samples, max(5.0, seconds / 20)))
        traffic = await _drive(gateway, seconds, rate, seconds / 2, fault_seconds)
        sampler.cancel()
        await asyncio.sleep(3)  # idle: the last answers' connections settle
        end = _resources(gateway)
    finally:
        await asyncio.to_thread(gateway.stop)
        process.stop_all()
    growth = _growth(start, end)
    first_half = [start] + [x["processes"] for x in samples if x["t_s"] <= seconds / 2]
    for name, g in growth.items():
        g["open_fds_max_first_half"] = max(x.get(name, {}).get("open_fds", 0) for x in first_half)
    # OPA is restarted by the injected fault: its numbers are a new process, not growth.
    measured = {k: v for k, v in growth.items() if k != "opa"}
    goals = {
        "no_error_except_injected": traffic["errors"] == 0,
        "rss_growth_below_10pct": all((g["rss_growth_pct"] or 0) < 10 for g in measured.values()),
        # Pools fill during the first half; a leak keeps growing after it.
        "no_fd_growth": all(
            g["open_fds_end"] <= g["open_fds_max_first_half"] for g in measured.values()
        ),
    }
    return {
        "seconds": seconds,
        "rate_per_s": rate,
        "injected_fault": f"policy OPA server stopped {fault_seconds:g}s at mid-run",
        "traffic": traffic,
        "processes": growth,
        "samples": samples,
        "goals": goals,
        "goals_met": all(goals.values()),
        "run_dir": str(Path(run_dir)),
    }
