"""Several replicas: Keycloak exchanges with a shared cache, warm latency with Redis, and the time
a policy change takes to reach every policy replica. Real components throughout: Keycloak (its
admin events count the exchanges), Redis, Envoy (round robin), the services as processes.

1. ``exchanges``: 5 login sessions of the demo user x 2 audiences, 60 requests each (bursts of
   20 concurrent) through Envoy to N token-exchange replicas. Keycloak exchanges per session and
   audience, for 1 replica with Redis, 3 replicas with Redis, and 3 replicas with memory caches
   only (the reference). Goal: 1 and 3 replicas with Redis equal (one exchange each).
2. ``latency``: ``/check`` at a fixed 500 requests/s (open loop, latency from the scheduled
   time), direct to one replica, side by side in alternating rounds: ``memory`` (memory cache),
   ``redis`` (``cache.backend: redis``: the memory cache in front, so a warm hit never reaches
   Redis) and ``redis_path`` (memory cache of one entry, 20 sessions in turn: every request is
   a Redis read and an AES-GCM decryption: the first request of a user on a replica; also at
   200 requests/s, ``redis_path_200``). Goal: p99 <= 2 ms like the memory cache.
3. ``policy_change``: 3 policy-service replicas (default settings: files checked every second)
   watching one ConfigMap-style volume, under load; a deny-list entry added or removed
   (alternately, 6 times); per replica, the time from the volume swap to the first answer that
   follows the new policy. Goal: every replica <= 5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import cpu_seconds, paced_load
from bench.scenario_token_exchange import KeepAliveClient
from tests.gateway_plugins.policy.replicas import start_policy_replicas, stop_policy_replicas
from tests.gateway_plugins.policy.running import CALLER_HEADERS as POLICY_CALLER_HEADERS
from tests.gateway_plugins.policy.running import POLICIES, SERVER, policy_settings, verified_by_opa
from tests.gateway_plugins.token_exchange import replicas as rp
from tests.gateway_plugins.token_exchange.keycloak_events import enable_exchange_events
from tests.gateway_plugins.token_exchange.running import CALLER_HEADERS, service_settings
from tests.testbed import envoy_proxy, paths
from tests.testbed import keycloak as kc
from tests.testbed.configmap_volume import ConfigMapVolume, policy_files
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP, new_plan
from tests.testbed.pki import CertificateAuthority
from tests.testbed.redis_server import RedisServer

SESSIONS = 5
AUDIENCES = (BACKEND_AUDIENCE, "cluster-a")
REQUESTS_PER_PAIR = 60
BURST = 20
PACED_RATE = 500
PACED_SECONDS = 6
LATENCY_ROUNDS = 3
REDIS_PATH_LOW_RATE = 200
REDIS_PATH_SESSIONS = 20
POLICY_REPLICAS = 3
POLICY_CHANGES = 6


class CyclingClient:
    """KeepAliveClient over several tokens in turn (one prepared request per token)."""

    def __init__(self, clients: list[KeepAliveClient]) -> None:
        self._clients = clients
        self._next = 0

    async def open(self) -> None:
        for client in self._clients:
            await client.open()

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def __call__(self) -> bool:
        client = self._clients[self._next]
        self._next = (self._next + 1) % len(self._clients)
        return await client()


def _check_headers(token: str, audience: str = BACKEND_AUDIENCE) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "x-mcp-servername": audience,
        "x-mcp-method": "tools/call",
        **CALLER_HEADERS,  # the service answers only the gateway (caller_auth)
    }


async def _login(keycloak: kc.Keycloak, user: str = "mcp") -> str:
    return await asyncio.to_thread(keycloak.user_token, user, user)


def _events_by_session(keycloak: kc.Keycloak, user_id: str) -> dict[str, int]:
    import urllib.parse

    query = urllib.parse.urlencode({"type": "TOKEN_EXCHANGE", "user": user_id, "max": 100000})
    counts: dict[str, int] = {}
    for event in keycloak.admin_get(f"realms/{REALM_MCP}/events?{query}"):
        sid = str(event.get("sessionId"))
        counts[sid] = counts.get(sid, 0) + 1
    return counts


# -- 1. exchanges per user and audience ------------------------------------------------------
async def _exchanges(
    keycloak: kc.Keycloak, redis: RedisServer, run_dir: Path, count: int, shared: bool
) -> dict[str, Any]:
    label = f"te-{count}-{'redis' if shared else 'memory'}"
    settings = service_settings(keycloak, run_dir / "secrets")
    if shared:
        settings = rp.shared_cache_settings(
            settings, redis, run_dir / "secrets", prefix=f"kmgbench:{label}:"
        )
    replicas = await asyncio.to_thread(rp.start_replicas, settings, run_dir, count, label=label)
    envoy = await asyncio.to_thread(
        envoy_proxy.start_envoy,
        run_dir,
        rp.ROUND_ROBIN_TEMPLATE,
        name=f"envoy-{label}",
        ENDPOINTS=rp.endpoints(replicas),
        RETRIES=2,
    )
    try:
        tokens = [await _login(keycloak) for _ in range(SESSIONS)]
        statuses: list[int] = []
        async with aiohttp.ClientSession() as http:

            async def check(token: str, audience: str) -> int:
                async with http.post(
                    f"{envoy.url}/check/mcp", headers=_check_headers(token, audience)
                ) as resp:
                    await resp.read()
                    return resp.status

            for token in tokens:
                for audience in AUDIENCES:
                    for _ in range(REQUESTS_PER_PAIR // BURST):
                        statuses += await asyncio.gather(
                            *(check(token, audience) for _ in range(BURST))
                        )
            sts_calls = sum(
                [await r.metric(http, "token_exchange_sts_calls_total{") for r in replicas]
            )
        claims = kc.decode_jwt(tokens[0])
        by_session = await asyncio.to_thread(_events_by_session, keycloak, claims["sub"])
        events = [by_session.get(kc.decode_jwt(t)["sid"], 0) for t in tokens]
    finally:
        envoy.stop()
        rp.stop_replicas(replicas)
    pairs = SESSIONS * len(AUDIENCES)
    return {
        "replicas": count,
        "cache": "redis" if shared else "memory",
        "requests": len(statuses),
        "errors": sum(1 for s in statuses if s != 200),
        "keycloak_exchanges": sum(events),
        "keycloak_exchanges_per_session": events,
        "exchanges_per_user_and_audience": round(sum(events) / pairs, 2),
        "service_sts_calls": sts_calls,
    }


# -- 2. warm latency ---------------------------------------------------------------------------
async def _latency_phase(
    keycloak: kc.Keycloak,
    redis: RedisServer,
    run_dir: Path,
    name: str,
    tokens: list[str],
) -> tuple[Callable[..., Awaitable[dict[str, Any]]], Callable[[], None]]:
    settings = service_settings(keycloak, run_dir / "secrets")
    if name != "memory":
        settings = rp.shared_cache_settings(
            settings, redis, run_dir / "secrets", prefix=f"kmgbench:latency-{name}:"
        )
    if name == "redis_path":
        settings.cache.max_entries = 1  # every request misses the memory cache
    (replica,) = await asyncio.to_thread(
        rp.start_replicas, settings, run_dir, 1, label=f"te-latency-{name}"
    )
    clients = [
        KeepAliveClient("127.0.0.1", replica.port, "/check/mcp", _check_headers(t), 4)
        for t in tokens
    ]
    client = CyclingClient(clients)
    await client.open()
    for _ in range(2):  # exchange (stored in Redis) and warm every path
        for one in clients:
            assert await one(), f"{name}: warm-up call failed"

    async def measure(rate: int = PACED_RATE) -> dict[str, Any]:
        cpu = cpu_seconds(replica.pid)
        result = await paced_load(client, rate, PACED_SECONDS)
        result["service_cpu_us_per_request"] = round(
            (cpu_seconds(replica.pid) - cpu) / max(result["count"], 1) * 1e6, 1
        )
        return result

    def stop() -> None:
        replica.proc.stop()

    measure.client = client  # type: ignore[attr-defined]
    return measure, stop


async def _latency(keycloak: kc.Keycloak, redis: RedisServer, run_dir: Path) -> dict[str, Any]:
    one = [await _login(keycloak)]
    many = [await _login(keycloak) for _ in range(REDIS_PATH_SESSIONS)]
    phases: dict[str, tuple[Any, Callable[[], None]]] = {
        "memory": await _latency_phase(keycloak, redis, run_dir, "memory", one),
        "redis": await _latency_phase(keycloak, redis, run_dir, "redis", one),
        "redis_path": await _latency_phase(keycloak, redis, run_dir, "redis_path", many),
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    rounds["redis_path_200"] = []
    try:
        for _ in range(LATENCY_ROUNDS):
            for name, (measure, _) in phases.items():
                rounds[name].append(await measure())
            rounds["redis_path_200"].append(await phases["redis_path"][0](REDIS_PATH_LOW_RATE))
    finally:
        for measure, stop in phases.values():
            await measure.client.close()  # type: ignore[attr-defined]
            stop()
    summary = {
        name: {
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "max_ms": max(r["max_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "service_cpu_us_per_request": statistics.median(
                r["service_cpu_us_per_request"] for r in results
            ),
        }
        for name, results in rounds.items()
    }
    return {
        "rate": PACED_RATE,
        "seconds_per_round": PACED_SECONDS,
        "summary": summary,
        "rounds": rounds,
    }


# -- 3. policy change to enforcement -----------------------------------------------------------
async def _policy_change(keycloak: kc.Keycloak, run_dir: Path) -> dict[str, Any]:
    volume = ConfigMapVolume(run_dir / "policy-volume")
    files = policy_files(POLICIES)
    volume.write(files)
    settings = policy_settings(keycloak, run_dir / "policy-work").model_copy(
        update={
            "policies_dir": volume.root,
            "data_dirs": None,
            "decision_log": None,
            # the watched volume carries no verification record: the engine guard checks each
            # loaded policy against the real OPA instead (as tests/.../test_replicas.py does)
            "embedded_verify": verified_by_opa(),
        }
    )
    deny = json.loads(files["data/deny_list.json"])
    revoked = json.dumps(
        {
            "deny_list": [
                *deny["deny_list"],
                {"servers": [SERVER], "tools": ["pods_list"], "users": ["mcp"], "reason": "off"},
            ]
        }
    )
    token = await _login(keycloak)
    replicas = await asyncio.to_thread(
        start_policy_replicas, settings, run_dir, POLICY_REPLICAS, label="policy-replica"
    )
    stop = asyncio.Event()
    statuses: list[int] = []
    rounds: list[list[float]] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def decide(url: str) -> bool | None:
                body = {"server": SERVER, "tool": "pods_list", "token": token}
                async with http.post(
                    f"{url}/v1/decide", json=body, headers=POLICY_CALLER_HEADERS
                ) as resp:
                    statuses.append(resp.status)
                    return (await resp.json()).get("allow")

            async def background(url: str) -> None:
                while not stop.is_set():
                    await decide(url)
                    await asyncio.sleep(0.01)

            load = [asyncio.create_task(background(r.url)) for r in replicas for _ in range(2)]

            async def reached(url: str, want: bool, since: float) -> float:
                while True:
                    if await decide(url) is want:
                        return time.monotonic() - since
                    await asyncio.sleep(0.01)

            for change in range(POLICY_CHANGES):
                revoke = change % 2 == 0
                await asyncio.sleep(1.0)
                started = time.monotonic()
                volume.write({**files, "data/deny_list.json": revoked} if revoke else files)
                took = await asyncio.wait_for(
                    asyncio.gather(*(reached(r.url, not revoke, started) for r in replicas)), 30
                )
                rounds.append([round(t, 3) for t in took])
            stop.set()
            await asyncio.gather(*load)
    finally:
        stop_policy_replicas(replicas)
    worst = [max(r) for r in rounds]
    return {
        "replicas": POLICY_REPLICAS,
        "interval_s": settings.reload.interval_s,
        "changes": POLICY_CHANGES,
        "seconds_per_change_and_replica": rounds,
        "slowest_replica_s": {"median": statistics.median(worst), "max": max(worst)},
        "requests": len(statuses),
        "errors": sum(1 for s in statuses if s != 200),
    }


async def run(soak: bool = False) -> dict[str, Any]:
    run_dir = paths.new_run_dir("bench-replicas")
    ca = CertificateAuthority(run_dir / "pki")
    keycloak = kc.Keycloak(
        run_dir=run_dir, plan=new_plan(), tls=ca.issue("keycloak"), ca_file=ca.cert
    )
    redis = RedisServer(run_dir)
    print("[bench] replicas: starting Keycloak (about a minute) and Redis", flush=True)
    await asyncio.to_thread(keycloak.start)
    await asyncio.to_thread(redis.start)
    try:
        await asyncio.to_thread(enable_exchange_events, keycloak)
        load_at_start = os.getloadavg()[0]
        exchanges = {
            "1_replica_redis": await _exchanges(keycloak, redis, run_dir, 1, True),
            "3_replicas_redis": await _exchanges(keycloak, redis, run_dir, 3, True),
            "3_replicas_memory": await _exchanges(keycloak, redis, run_dir, 3, False),
        }
        latency = await _latency(keycloak, redis, run_dir)
        policy = await _policy_change(keycloak, run_dir)
        per_pair = {k: v["exchanges_per_user_and_audience"] for k, v in exchanges.items()}
        summary = latency["summary"]
        return {
            "exchanges": exchanges,
            "latency": latency,
            "policy_change": policy,
            "redis": {"source": redis.source},
            "load_average_1m": {"start": load_at_start, "end": os.getloadavg()[0]},
            "goals": {
                "exchanges_equal_1_and_3_replicas": per_pair["1_replica_redis"]
                == per_pair["3_replicas_redis"],
                "warm_p99_le_2ms_with_redis_at_500rps": summary["redis"]["p99_ms"] <= 2.0
                and summary["redis"]["errors"] == 0,
                "redis_path_p99_le_2ms_at_500rps": summary["redis_path"]["p99_ms"] <= 2.0
                and summary["redis_path"]["errors"] == 0,
                "policy_change_le_5s_on_every_replica": policy["slowest_replica_s"]["max"] <= 5.0
                and policy["errors"] == 0,
            },
            "run_dir": str(run_dir),
        }
    finally:
        redis.stop()
        keycloak.stop()
