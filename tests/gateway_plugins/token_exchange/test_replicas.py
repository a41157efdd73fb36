"""Three token-exchange replicas (real processes) behind a real Envoy (round robin), sharing the
testbed's real Redis, exchanging at the real Keycloak; Keycloak's admin events count exchanges.

* 300 requests of one user: exactly one exchange at Keycloak (and three without the shared
  cache: the control that shows the count means something);
* Redis stopped in the middle of the load: no request fails; Redis back: used again;
* one replica killed (SIGKILL) in the middle of the load: no client sees an error. Envoy runs
  the retry policy a mesh gives by default (connect-failure, refused-stream, reset; another
  replica each time); its counters show the kill was hit and retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_plugins.token_exchange import replicas as rp
from tests.gateway_plugins.token_exchange.keycloak_events import (
    enable_exchange_events,
    exchange_events,
)
from tests.gateway_plugins.token_exchange.running import CALLER_HEADERS, service_settings
from tests.testbed import keycloak as kc
from tests.testbed.envoy_proxy import EnvoyProxy
from tests.testbed.fixtures_identity import EnvoyFactory
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.timeout(600)

REPLICAS = 3


@dataclass
class Deployment:
    replicas: list[rp.Replica]
    envoy: EnvoyProxy
    prefix: str

    @property
    def url(self) -> str:
        return self.envoy.url


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(
        connector=connector, headers=CALLER_HEADERS, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


@pytest.fixture(scope="module")
def events_on(keycloak: kc.Keycloak) -> None:
    enable_exchange_events(keycloak)


@pytest.fixture
def deploy(
    keycloak: kc.Keycloak,
    redis_server: RedisServer,
    envoy: EnvoyFactory,
    testbed_run_dir: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Deployment]]:
    started: list[rp.Replica] = []
    labels = itertools.count(1)

    def make(*, shared: bool = True, **cache: Any) -> Deployment:
        label = f"te-replicas-{next(labels)}-{tmp_path.name[:20]}"
        prefix = f"kmgtest:{label}:"
        settings = service_settings(keycloak, tmp_path / "secrets")
        if shared:
            settings = rp.shared_cache_settings(
                settings, redis_server, tmp_path / "secrets", prefix=prefix, **cache
            )
        replicas = rp.start_replicas(settings, testbed_run_dir / "replicas", REPLICAS, label=label)
        started.extend(replicas)
        proxy = envoy(
            rp.ROUND_ROBIN_TEMPLATE, name="te-rr", ENDPOINTS=rp.endpoints(replicas), RETRIES=2
        )
        return Deployment(replicas, proxy, prefix)

    try:
        yield make
    finally:
        rp.stop_replicas(started)


async def _check(http: aiohttp.ClientSession, url: str, token: str) -> int:
    headers = {
        "authorization": f"Bearer {token}",
        "x-mcp-servername": BACKEND_AUDIENCE,
        "x-mcp-method": "tools/call",
    }
    try:
        async with http.post(f"{url}/check/mcp", headers=headers) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return -1


async def _served(http: aiohttp.ClientSession, replica: rp.Replica) -> float:
    return await replica.metric(http, "token_exchange_requests_total{")


async def _sts_calls(http: aiohttp.ClientSession, deployment: Deployment) -> float:
    total = 0.0
    for replica in deployment.replicas:
        if replica.proc.running:
            total += await replica.metric(http, "token_exchange_sts_calls_total{")
    return total


def _session(token: str) -> tuple[str, str]:
    claims = kc.decode_jwt(token)
    return claims["sub"], claims["sid"]


async def _login(keycloak: Any, user: str = "mcp") -> str:
    token: str = await asyncio.to_thread(keycloak.user_token, user, user)
    return token


async def test_300_requests_of_one_user_make_one_keycloak_exchange(
    keycloak: kc.Keycloak,
    events_on: None,
    deploy: Callable[..., Deployment],
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    deployment = deploy()
    token = await _login(keycloak)
    statuses = []
    for _ in range(10):  # 10 waves of 30 concurrent requests, spread round robin
        statuses += await asyncio.gather(*(_check(http, deployment.url, token) for _ in range(30)))
    assert statuses == [200] * 300
    served = [await _served(http, r) for r in deployment.replicas]
    assert all(count >= 50 for count in served), served  # every replica took its share
    user_id, session_id = _session(token)
    assert await asyncio.to_thread(exchange_events, keycloak, user_id, session_id) == 1
    assert await _sts_calls(http, deployment) == 1
    # what Redis holds for it: one entry, nothing readable
    client = redis_server.client()
    keys = list(client.scan_iter(f"{deployment.prefix}*"))
    assert len(keys) == 1
    blob = keys[0] + client.get(keys[0])
    for needle in (token, token.split(".")[1], hashlib.sha256(token.encode()).hexdigest(), "mcp"):
        assert needle.encode() not in blob


async def test_without_the_shared_cache_each_replica_exchanges(
    keycloak: kc.Keycloak,
    events_on: None,
    deploy: Callable[..., Deployment],
    http: aiohttp.ClientSession,
) -> None:
    """The control: the same load on replicas with memory caches costs one exchange each."""
    deployment = deploy(shared=False)
    token = await _login(keycloak)
    statuses = []
    for _ in range(10):
        statuses += await asyncio.gather(*(_check(http, deployment.url, token) for _ in range(30)))
    assert statuses == [200] * 300
    user_id, session_id = _session(token)
    assert await asyncio.to_thread(exchange_events, keycloak, user_id, session_id) == REPLICAS


@dataclass
class Load:
    """Closed-loop load through Envoy from a pool of user tokens that can grow meanwhile."""

    http: aiohttp.ClientSession
    url: str
    tokens: list[str]
    statuses: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            self.statuses.append(await _check(self.http, self.url, rng.choice(self.tokens)))
            await asyncio.sleep(0.005)

    def start(self, workers: int = 8) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.worker()) for _ in range(workers)]

    async def finish(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stop.set()
        await asyncio.gather(*tasks)


async def test_redis_stopped_mid_load_fails_no_request_then_is_used_again(
    keycloak: kc.Keycloak,
    events_on: None,
    deploy: Callable[..., Deployment],
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    deployment = deploy(retry_after_s=0.5)
    load = Load(http, deployment.url, [await _login(keycloak), await _login(keycloak, "viewer")])
    tasks = load.start()
    try:
        await asyncio.sleep(1.0)
        redis_server.stop()
        try:
            # users who log in during the outage: uncached, exchanged by each replica alone
            for _ in range(2):
                load.tokens.append(await _login(keycloak))
                await asyncio.sleep(0.7)
        finally:
            redis_server.start()
        await asyncio.sleep(1.5)
    finally:
        await load.finish(tasks)
    assert load.statuses, "no load was sent"
    failed = [s for s in load.statuses if s != 200]
    assert not failed, f"{len(failed)} of {len(load.statuses)} requests failed: {set(failed)}"
    fallbacks = [
        await r.metric(http, 'token_exchange_shared_cache_total{result="fallback"}')
        for r in deployment.replicas
    ]
    assert sum(fallbacks) > 0, "the outage was never noticed: the test did not test it"
    # Redis is used again: a new session, requested through every replica, one exchange
    token = await _login(keycloak)
    statuses = []
    for _ in range(4):
        statuses += await asyncio.gather(*(_check(http, deployment.url, token) for _ in range(15)))
    assert statuses == [200] * 60
    user_id, session_id = _session(token)
    assert await asyncio.to_thread(exchange_events, keycloak, user_id, session_id) == 1
    for replica in deployment.replicas:
        assert await replica.metric(http, "token_exchange_shared_cache_up") == 1


async def test_a_replica_killed_mid_load_costs_no_client_an_error(
    keycloak: kc.Keycloak,
    deploy: Callable[..., Deployment],
    http: aiohttp.ClientSession,
) -> None:
    deployment = deploy()
    load = Load(http, deployment.url, [await _login(keycloak), await _login(keycloak, "viewer")])
    victim = deployment.replicas[1]
    tasks = load.start(workers=12)
    try:
        await asyncio.sleep(1.5)
        served_before_kill = await _served(http, victim)
        before = len(load.statuses)
        victim.proc.kill()  # SIGKILL: in-flight requests die with their connections
        for _ in range(200):  # 600 more answers, at most 20 s
            if len(load.statuses) >= before + 600:
                break
            await asyncio.sleep(0.1)
    finally:
        await load.finish(tasks)
    assert served_before_kill > 0, "the killed replica had taken no traffic"
    assert len(load.statuses) >= before + 600
    failed = [s for s in load.statuses if s != 200]
    assert not failed, f"{len(failed)} of {len(load.statuses)} requests failed: {set(failed)}"
    stats = await _envoy_stats(http, deployment.envoy)
    retried = stats.get("cluster.replicas.upstream_rq_retry", 0)
    assert retried >= 1, f"no request was retried: the kill was never hit ({stats})"
    assert stats.get("cluster.replicas.upstream_rq_retry_success", 0) == retried


async def _envoy_stats(http: aiohttp.ClientSession, proxy: EnvoyProxy) -> dict[str, int]:
    async with http.get(f"{proxy.admin_url}/stats?filter=^cluster\\.replicas\\.") as resp:
        text = await resp.text()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats
