"""The shared token cache against a real Redis: what lands in it, single flight across
"replicas" (separate connection pools, as separate processes would have), and Redis outages.

``fetch`` here is the token service's place (the exchange itself is exercised against Keycloak
in ``test_replicas.py``); it counts its calls, which is what single flight is about.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway_plugins.token_exchange.cache_config import RedisCacheConfig
from gateway_plugins.token_exchange.config import SERVICE, Settings
from gateway_plugins.token_exchange.exchanger import Exchanged
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.redis_cache import (
    CacheKeyError,
    SharedCacheMaterial,
    SharedTokenCache,
    entry_digest,
    open_shared_cache,
    parse_keys,
)
from kmg_common.settings import SettingsError, load_settings
from tests.testbed.redis_server import RedisServer

KEY_A = "k" * 16 + "A" * 28  # 44 characters, like `openssl rand -base64 32`
KEY_B = "q" * 16 + "B" * 28
SUBJECT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS1zdWJqZWN0"
ISSUED = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJiYWNrZW5kIn0.c2lnbmF0dXJlLW9mLXRoZS1leGNoYW5nZQ"
PLAN = "mcp-test/kubernetes-mcp(Step(sts='mcp'))"

Fetch = Callable[[], Awaitable[tuple[Exchanged, float]]]


class CountingSTS:
    """Stands where the token service stands: counts exchanges, takes ``delay`` each."""

    def __init__(self, delay: float = 0.0, ttl: float = 240.0) -> None:
        self.calls = 0
        self.delay = delay
        self.ttl = ttl
        self.fail: Exception | None = None

    async def __call__(self) -> tuple[Exchanged, float]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return Exchanged(f"{ISSUED}-{self.calls}", time.time() + self.ttl + 30, "openid"), self.ttl


def _config(redis: RedisServer, prefix: str, **extra: Any) -> RedisCacheConfig:
    return RedisCacheConfig(url=redis.url, encryption_keys_env="UNUSED", key_prefix=prefix, **extra)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"kmgtest:{request.node.name[:40]}:"


@pytest.fixture
async def replicas(
    redis_server: RedisServer, prefix: str
) -> AsyncIterator[Callable[..., SharedTokenCache]]:
    """``replica(keys=..., **config)``: a cache with its own pool and metrics, like a process."""
    made: list[SharedTokenCache] = []

    def make(keys: str = KEY_A, **extra: Any) -> SharedTokenCache:
        material = SharedCacheMaterial(parse_keys(keys), redis_server.password)
        metrics = ExchangeMetrics(CollectorRegistry())
        cache = open_shared_cache(_config(redis_server, prefix, **extra), material, metrics=metrics)
        cache.metrics = metrics  # type: ignore[attr-defined]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()
    client = redis_server.client()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def _results(cache: SharedTokenCache) -> dict[str, float]:
    metrics: ExchangeMetrics = cache.metrics  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for metric in metrics.shared_cache.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["result"]] = sample.value
    return out


def _up(cache: SharedTokenCache) -> float:
    metrics: ExchangeMetrics = cache.metrics  # type: ignore[attr-defined]
    return float(metrics.shared_cache_up._value.get())


# -- what Redis holds --------------------------------------------------------------------------
async def test_nothing_readable_lands_in_redis(
    replicas: Callable[..., SharedTokenCache], redis_server: RedisServer, prefix: str
) -> None:
    cache = replicas()
    sts = CountingSTS()
    entry, ttl = await cache.get_or_fetch((SUBJECT, "mcp-test/kubernetes-mcp", "", PLAN), sts)
    assert entry.token == f"{ISSUED}-1"
    client = redis_server.client()
    keys = list(client.scan_iter(f"{prefix}*"))
    assert len(keys) == 1  # the entry; the lock is gone
    blob = b"".join(keys) + b"".join(client.get(k) for k in keys)
    sha = hashlib.sha256(SUBJECT.encode())
    forbidden = {
        "subject token": SUBJECT.encode(),
        "issued token": ISSUED.encode(),
        "issued token payload": ISSUED.split(".")[1].encode(),
        "subject token sha256 (hex)": sha.hexdigest().encode(),
        "subject token sha256 (base64url)": base64.urlsafe_b64encode(sha.digest()).rstrip(b"="),
        "audience": b"kubernetes-mcp",
        "scope": b"openid",
    }
    for what, needle in forbidden.items():
        assert needle not in blob, f"{what} is readable in Redis"
    # the TTL follows the token: exp minus the margin (as the fetch computed it)
    pttl = client.pttl(keys[0])
    assert ttl - 5 <= pttl / 1000 <= ttl, (pttl, ttl)


async def test_a_value_moved_to_another_entry_is_refused(
    replicas: Callable[..., SharedTokenCache], redis_server: RedisServer, prefix: str
) -> None:
    """Someone who can write Redis copies alice's entry over bob's: bob must not get it."""
    cache = replicas()
    alice, bob = (SUBJECT + "-alice", "aud", "", PLAN), (SUBJECT + "-bob", "aud", "", PLAN)
    await cache.get_or_fetch(alice, CountingSTS())
    client = redis_server.client()
    (alice_key,) = client.scan_iter(f"{prefix}*")
    key = parse_keys(KEY_A)[0]
    bob_key = f"{prefix}t:{entry_digest(key, bob)}"
    client.set(bob_key, client.get(alice_key), px=60_000)
    sts = CountingSTS()
    entry, _ = await cache.get_or_fetch(bob, sts)
    assert sts.calls == 1  # exchanged for bob, alice's token not used
    assert entry.token == f"{ISSUED}-1"
    refused = _results(cache)["undecryptable"]
    assert refused >= 1  # each read of the moved value (before and after taking the lock)
    # tampering with a value (one flipped byte) is refused the same way
    value = bytearray(client.get(alice_key))
    value[-1] ^= 1
    client.set(alice_key, bytes(value), px=60_000)
    again = CountingSTS()
    await cache.get_or_fetch(alice, again)
    assert again.calls == 1
    assert _results(cache)["undecryptable"] > refused


async def test_key_rotation_reads_old_entries_and_writes_with_the_new_key(
    replicas: Callable[..., SharedTokenCache],
) -> None:
    parts = (SUBJECT, "aud", "", PLAN)
    old = replicas(KEY_A)
    await old.get_or_fetch(parts, CountingSTS())
    rotated = replicas(f"{KEY_B}\n{KEY_A}")  # new key first, old one still accepted
    sts = CountingSTS()
    entry, _ = await rotated.get_or_fetch(parts, sts)
    assert (sts.calls, entry.token) == (0, f"{ISSUED}-1")
    only_new = replicas(KEY_B)
    fresh = CountingSTS()
    await only_new.get_or_fetch((SUBJECT + "x", "aud", "", PLAN), fresh)
    await only_new.get_or_fetch(parts, fresh)  # the old key's entries are not readable
    assert fresh.calls == 2


def test_key_material_and_url_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(CacheKeyError, match="fewer than 32"):
        parse_keys("short-key")
    with pytest.raises(SettingsError, match="carries credentials"):
        load_settings(
            Settings,
            SERVICE,
            cli={
                "validation.issuers": [{"issuer": "https://kc.example/realms/mcp"}],
                "cache.redis.url": "redis://:hunter2@redis:6379/0",
            },
            environ={},
        )
    config = tmp_path / "te.yaml"
    config.write_text(
        "validation: {issuers: [{issuer: 'https://kc.example/realms/mcp'}]}\n"
        "cache: {backend: redis, redis: {password: hunter2}}\n"
    )
    with pytest.raises(SettingsError, match="password_file"):
        load_settings(Settings, SERVICE, config_file=config, environ={})
    config.write_text(
        "validation: {issuers: [{issuer: 'https://kc.example/realms/mcp'}]}\n"
        "cache: {backend: redis}\n"
    )
    with pytest.raises(SettingsError, match="encryption_keys_file"):
        load_settings(Settings, SERVICE, config_file=config, environ={})


# -- single flight across replicas -------------------------------------------------------------
async def test_three_replicas_make_one_exchange(
    replicas: Callable[..., SharedTokenCache],
) -> None:
    caches = [replicas() for _ in range(3)]
    sts = CountingSTS(delay=0.2)
    parts = (SUBJECT, "aud", "", PLAN)
    results = await asyncio.gather(*(caches[i % 3].get_or_fetch(parts, sts) for i in range(90)))
    assert sts.calls == 1
    assert {entry.token for entry, _ in results} == {f"{ISSUED}-1"}
    totals: dict[str, float] = {}
    for cache in caches:
        for result, count in _results(cache).items():
            totals[result] = totals.get(result, 0) + count
    assert totals.get("stored") == 1
    assert totals.get("waited", 0) + totals.get("hit", 0) == 89
    assert "fallback" not in totals
    assert "wait_timeout" not in totals


async def test_when_the_holder_fails_another_replica_takes_over(
    replicas: Callable[..., SharedTokenCache],
) -> None:
    holder, waiter = replicas(), replicas()
    parts = (SUBJECT, "aud", "", PLAN)
    failing = CountingSTS(delay=0.2)
    failing.fail = RuntimeError("the token service refused")
    working = CountingSTS()
    first = asyncio.create_task(holder.get_or_fetch(parts, failing))
    await asyncio.sleep(0.05)  # the holder has the lock now
    entry, _ = await waiter.get_or_fetch(parts, working)
    with pytest.raises(RuntimeError, match="refused"):
        await first
    assert (failing.calls, working.calls) == (1, 1)
    assert entry.token == f"{ISSUED}-1"


async def test_a_lock_left_by_a_dead_replica_is_waited_for_boundedly(
    replicas: Callable[..., SharedTokenCache], redis_server: RedisServer, prefix: str
) -> None:
    cache = replicas(lock_wait_s=0.3)
    parts = (SUBJECT, "aud", "", PLAN)
    lock = f"{prefix}l:{entry_digest(parse_keys(KEY_A)[0], parts)}"
    redis_server.client().set(lock, "a-replica-that-died", px=60_000)
    sts = CountingSTS()
    entry, _ = await asyncio.wait_for(cache.get_or_fetch(parts, sts), 10)
    assert sts.calls == 1  # fell through after the bounded wait
    assert _results(cache) == {"wait_timeout": 1.0}
    # and shared what it got: the next replica finds it without waiting
    other = replicas()
    assert (await other.get_or_fetch(parts, CountingSTS()))[0] == entry


# -- Redis down or slow ------------------------------------------------------------------------
async def test_redis_stopped_falls_back_then_recovers(
    replicas: Callable[..., SharedTokenCache], redis_server: RedisServer
) -> None:
    cache = replicas(retry_after_s=0.5)
    sts = CountingSTS()
    await cache.get_or_fetch((SUBJECT + "1", "aud", "", PLAN), sts)
    assert _up(cache) == 1
    redis_server.stop()
    try:
        for n in range(2, 6):  # every call answered, by this replica's own exchange
            entry, _ = await asyncio.wait_for(
                cache.get_or_fetch((SUBJECT + str(n), "aud", "", PLAN), sts), 10
            )
            assert entry.token == f"{ISSUED}-{n}"
        assert _up(cache) == 0
        assert _results(cache)["fallback"] == 4
        assert not cache.available  # skipped for retry_after_s, no connection attempt each time
    finally:
        redis_server.start()
    await asyncio.sleep(0.6)
    parts = (SUBJECT + "after", "aud", "", PLAN)
    await cache.get_or_fetch(parts, sts)
    assert _up(cache) == 1
    assert _results(cache)["stored"] == 2  # used again: stored for the others
    other = replicas()
    before = sts.calls
    await other.get_or_fetch(parts, sts)
    assert sts.calls == before


async def test_frozen_redis_costs_one_timeout_then_is_skipped(
    replicas: Callable[..., SharedTokenCache], redis_server: RedisServer
) -> None:
    """SIGSTOP: the kernel still accepts connections, nothing answers (a hung Redis)."""
    cache = replicas(timeout_s=0.1, retry_after_s=30)
    sts = CountingSTS()
    await cache.get_or_fetch((SUBJECT + "warm", "aud", "", PLAN), sts)  # pool connected
    redis_server.pause()
    try:
        entry, _ = await asyncio.wait_for(
            cache.get_or_fetch((SUBJECT + "frozen", "aud", "", PLAN), sts), 10
        )
        assert entry.token == f"{ISSUED}-2"
        assert _results(cache)["fallback"] == 1
        assert not cache.available
        entry, _ = await asyncio.wait_for(
            cache.get_or_fetch((SUBJECT + "frozen-2", "aud", "", PLAN), sts), 10
        )
        assert _results(cache)["fallback"] == 2
    finally:
        redis_server.resume()
