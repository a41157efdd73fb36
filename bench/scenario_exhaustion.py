"""One user trying to exhaust or stall the backend, another user's ``ping`` meanwhile (issue 14).

Against a real testbed cluster (etcd + kube-apiserver + controller manager + scheduler + kwok,
started here with ``tests.testbed.cluster``; kwok runs exec commands on this machine, so a pod's
command can really print 600 MB) and one ``mcp-backend serve`` process with default settings:

* the **attacker** (a service account allowed to exec into pods and list ConfigMaps in one
  namespace) runs, all at once, ``pods_exec`` of a command printing 600 MB and four concurrent
  ``resources_list`` calls with ``output: yaml, limit: 100000`` over 300 ConfigMaps of 100 KB
  each (about 30 MB of YAML); as soon as all five are answered it starts them again, until the
  phase has lasted at least ``ATTACK_SECONDS``;
* the **other user** (another service account) sends JSON-RPC ``ping`` to the same backend at a
  fixed rate (open loop, latency from the scheduled send time: ``bench.load.paced_load``), during
  the attack and, side by side, during an equally long **idle** phase without the attack.

Rounds alternate idle and attack phases. Per phase: the backend's peak RSS (``VmHWM`` from
/proc, reset at the start of each phase through ``/proc/<pid>/clear_refs``), its CPU time, and
the ping latency percentiles; per attack call: duration, error flag and the size of the answer.

Goals (issue 14, item 3): during the attack, backend peak RSS <= 150 MB and the other user's
ping p99 <= 50 ms. Everything shares the 2-core machine (API server, etcd, kwok, the command
printing 600 MB, the backend, this load generator), so the ping latency includes CPU contention
from the other processes too: compare the idle and attack figures of the same run, and each
phase's ``machine_cpu_busy`` (the share of both cores in use by every process on the machine)
and load average. After the fix an attack round takes well under a second, so the attacker
starts many more rounds than before (and kwok leaves each stopped ``yes`` blocked until the
cluster stops); the API server still encodes each 1000-item list it is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s

from bench.backend_stack import serve_backend
from bench.load import cpu_seconds, paced_load, percentiles
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster
from tests.testbed.control_plane.start import start_cluster
from tests.testbed.pki import CertificateAuthority

NS = "exhaust"
CONFIGMAPS = 300
CONFIGMAP_BYTES = 100 * 1024
EXEC_BYTES = 600_000_000
LIST_CALLS = 4
ROUNDS = 3
IDLE_SECONDS = 6
ATTACK_SECONDS = 6  # at least; an attack round in progress is finished first
PING_RATE = 50  # per second, the other user's
CALL_TIMEOUT_S = 180
GOAL_PEAK_RSS_MB = 150
GOAL_PING_P99_MS = 50
# 600 MB of 70-character lines
EXEC_COMMAND = ["sh", "-c", f"yes {'x' * 69} | head -c {EXEC_BYTES}"]
LIST_ARGS = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS, "output": "yaml"}
RPC_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _prepare(cluster: Cluster) -> tuple[str, str, str]:
    """Namespace, a Running pod on a kwok node, the ConfigMaps; (attacker token, other user's
    token, pod name)."""
    await cluster.ensure_fake_nodes(1)
    line = "k" * 99 + "\n"
    value = line * (CONFIGMAP_BYTES // 10 // len(line))
    async with cluster.admin_client() as api:
        core = k8s.CoreV1Api(api)
        await core.create_namespace({"metadata": {"name": NS}})  # type: ignore[arg-type]
        await core.create_namespaced_pod(
            NS,
            {  # type: ignore[arg-type]
                "metadata": {"name": "shell"},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
            },
        )
        for i in range(CONFIGMAPS):
            await core.create_namespaced_config_map(
                NS,
                {  # type: ignore[arg-type]
                    "metadata": {"name": f"big-{i:03d}"},
                    "data": {f"file-{k}.conf": value for k in range(10)},
                },
            )
        deadline = time.monotonic() + 120
        while (await core.read_namespaced_pod("shell", NS)).status.phase != "Running":
            if time.monotonic() > deadline:
                raise RuntimeError("pod 'shell' not Running on the kwok node within 120 s")
            await asyncio.sleep(0.25)
    attacker = await cluster.service_account_token(
        name="attacker",
        namespace=NS,
        rules=[
            {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
        ],
    )
    other = await cluster.service_account_token(name="bystander", namespace=NS)
    return attacker, other, "shell"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far (``/proc/stat``)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (``clear_refs`` value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Rpc:
    """JSON-RPC POSTs to the backend's ``/mcp`` with one user's token, as a gateway sends them."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.headers = {**RPC_HEADERS, "Authorization": f"Bearer {token}"}
        self.ids = iter(range(1, 10**9))

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params is not None:
            request["params"] = params
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with self.http.post(
            self.url, data=orjson.dumps(request), headers=self.headers, timeout=timeout
        ) as resp:
            raw = await resp.read()
        if resp.status != 200:
            return {"error": {"code": resp.status, "message": raw[:300].decode(errors="replace")}}
        answer: dict[str, Any] = orjson.loads(raw)
        return answer

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        answer = await self.send("tools/call", {"name": name, "arguments": arguments})
        elapsed = time.perf_counter() - started
        result = answer.get("result") or {}
        text = "".join(c.get("text", "") for c in result.get("content") or [])
        return {
            "tool": name,
            "seconds": round(elapsed, 3),
            "is_error": bool(result.get("isError")) or "error" in answer,
            "text_chars": len(text),
            "text_start": text[:160],
            "jsonrpc_error": answer.get("error"),
        }


async def _attack_round(attacker: Rpc, pod: str) -> list[dict[str, Any]]:
    calls: list[Awaitable[dict[str, Any]]] = [
        attacker.tool("pods_exec", {"name": pod, "namespace": NS, "command": EXEC_COMMAND})
    ]
    calls += [
        attacker.tool("resources_list", {**LIST_ARGS, "limit": 100000}) for _ in range(LIST_CALLS)
    ]
    return list(await asyncio.gather(*calls))


async def _phase(
    pid: int, other: Rpc, seconds: float, attack: Callable[[], Awaitable[Any]] | None
) -> dict[str, Any]:
    """Pings at PING_RATE for ``seconds`` (longer while an attack round runs); with ``attack``,
    attack rounds back to back meanwhile."""
    _reset_peak(pid)
    cpu_before = cpu_seconds(pid)
    machine_before = _machine_cpu()
    rounds: list[Any] = []
    stop = asyncio.Event()

    async def attacking() -> None:
        while not stop.is_set():
            assert attack is not None
            rounds.append(await attack())

    async def ping() -> bool:
        answer = await other.send("ping")
        return answer.get("result") == {}

    attacker = asyncio.create_task(attacking()) if attack is not None else None
    pings = await paced_load(ping, PING_RATE, int(seconds), samples=True)
    stop.set()
    extra: list[float] = []
    if attacker is not None:  # keep pinging until the round in progress is answered
        while not attacker.done():
            started = time.perf_counter()
            await ping()
            extra.append(time.perf_counter() - started)
            await asyncio.sleep(1 / PING_RATE)
        await attacker
    samples = pings.pop("samples_s") + extra
    busy, total = (a - b for a, b in zip(_machine_cpu(), machine_before, strict=True))
    return {
        "machine_cpu_busy": round(busy / max(total, 1), 3),
        "load_average_1m_at_end": os.getloadavg()[0],
        "peak_rss_kib": _status_kib(pid, "VmHWM"),
        "rss_kib_at_end": _status_kib(pid, "VmRSS"),
        "backend_cpu_s": round(cpu_seconds(pid) - cpu_before, 3),
        "ping_errors": pings["errors"],
        "samples_s": samples,
        "attack_rounds": rounds,
    }


async def _measure(base: str, pid: int, attacker_token: str, other_token: str, pod: str) -> Any:
    url = f"{base}/mcp"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        attacker, other = Rpc(http, url, attacker_token), Rpc(http, url, other_token)
        # Warm-up (connections, discovery): one small call of each kind, not measured.
        warm = await attacker.tool("pods_exec", {"name": pod, "namespace": NS, "command": ["id"]})
        if warm["is_error"]:
            raise RuntimeError(f"warm-up exec failed: {warm}")
        await attacker.tool("resources_list", {**LIST_ARGS, "limit": 2})
        await other.send("ping")
        phases: dict[str, list[dict[str, Any]]] = {"idle": [], "attack": []}
        for _ in range(ROUNDS):
            phases["idle"].append(await _phase(pid, other, IDLE_SECONDS, None))
            phases["attack"].append(
                await _phase(pid, other, ATTACK_SECONDS, lambda: _attack_round(attacker, pod))
            )
    return phases


def _summary(phases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, runs in phases.items():
        samples = [s for r in runs for s in r["samples_s"]]
        out[name] = {
            "peak_rss_mb": round(max(r["peak_rss_kib"] for r in runs) / 1024, 1),
            "peak_rss_mb_per_round": [round(r["peak_rss_kib"] / 1024, 1) for r in runs],
            "rss_mb_at_end_per_round": [round(r["rss_kib_at_end"] / 1024, 1) for r in runs],
            "backend_cpu_s_per_round": [r["backend_cpu_s"] for r in runs],
            # the whole machine's CPU use (both cores, every process, other work included) and
            # load: the ping latency includes waiting for a core
            "machine_cpu_busy_per_round": [r["machine_cpu_busy"] for r in runs],
            "load_average_1m_per_round": [round(r["load_average_1m_at_end"], 2) for r in runs],
            "ping": {**percentiles(samples), "errors": sum(r["ping_errors"] for r in runs)},
        }
        calls = [c for r in runs for attack in r["attack_rounds"] for c in attack]
        if calls:
            out[name]["attack_rounds"] = sum(len(r["attack_rounds"]) for r in runs)
            out[name]["attack_calls"] = {
                tool: {
                    "count": len(mine),
                    "errors": sum(c["is_error"] for c in mine),
                    "seconds_max": max(c["seconds"] for c in mine),
                    "seconds_median": sorted(c["seconds"] for c in mine)[len(mine) // 2],
                    "text_chars_max": max(c["text_chars"] for c in mine),
                    "example": mine[0],
                }
                for tool in ("pods_exec", "resources_list")
                if (mine := [c for c in calls if c["tool"] == tool])
            }
    attack = out["attack"]
    out["goals"] = {
        "attack_peak_rss_le_150mb": attack["peak_rss_mb"] <= GOAL_PEAK_RSS_MB,
        "attack_ping_p99_le_50ms": attack["ping"].get("p99_ms", 1e9) <= GOAL_PING_P99_MS,
    }
    return out


async def run(soak: bool = False) -> dict[str, Any]:
    process.reap_stale()
    load_at_start = os.getloadavg()[0]
    run_dir = paths.new_run_dir("bench-exhaustion")
    ca = CertificateAuthority(run_dir / "pki")
    cluster: Cluster | None = None
    backend: process.ManagedProcess | None = None
    try:
        cluster = await asyncio.to_thread(start_cluster, "bench-x", ca, run_dir, [])
        attacker, other, pod = await _prepare(cluster)
        backend, base = serve_backend(cluster, run_dir, "backend")  # default limits
        assert backend.proc is not None
        phases = await _measure(base, backend.proc.pid, attacker, other, pod)
        return {
            "setup": {
                "configmaps": CONFIGMAPS,
                "configmap_bytes": CONFIGMAP_BYTES,
                "exec_bytes": EXEC_BYTES,
                "concurrent_list_calls": LIST_CALLS,
                "rounds": ROUNDS,
                "idle_seconds": IDLE_SECONDS,
                "attack_seconds_min": ATTACK_SECONDS,
                "ping_rate_per_s": PING_RATE,
                "cpus": len(os.sched_getaffinity(0)),
                "load_average_1m_at_start": load_at_start,
                "load_average_1m_at_end": os.getloadavg()[0],
            },
            **_summary(phases),
        }
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.stop()
        if cluster is not None:
            cluster.stop()
