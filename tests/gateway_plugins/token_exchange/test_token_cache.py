"""LRU + single-flight cache: pure logic, driven with a controllable clock."""

from __future__ import annotations

import asyncio

import pytest

from gateway_plugins.token_exchange.token_cache import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Refused(Exception):
    pass


async def test_hit_after_miss_until_expiry() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(10, clock=clock)
    calls = 0

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        return f"token-{calls}", 60.0

    assert await cache.get_or_fetch("k", fetch) == ("token-1", "miss")
    assert await cache.get_or_fetch("k", fetch) == ("token-1", "hit")
    clock.now += 59.9
    assert await cache.get_or_fetch("k", fetch) == ("token-1", "hit")
    clock.now += 0.2
    assert await cache.get_or_fetch("k", fetch) == ("token-2", "miss")
    assert calls == 2


async def test_lru_bound_evicts_least_recently_used() -> None:
    cache: TokenCache[str] = TokenCache(2)
    cache.put("a", "A", 60)
    cache.put("b", "B", 60)
    assert cache.get("a") == "A"  # a is now most recently used
    cache.put("c", "C", 60)
    assert cache.get("b") is None
    assert cache.get("a") == "A"
    assert cache.get("c") == "C"
    assert len(cache) == 2
    assert cache.evictions == 1


async def test_zero_ttl_is_not_cached() -> None:
    cache: TokenCache[str] = TokenCache(10)
    calls = 0

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        return "short-lived", 0.0

    await cache.get_or_fetch("k", fetch)
    await cache.get_or_fetch("k", fetch)
    assert calls == 2
    assert len(cache) == 0


async def test_concurrent_identical_misses_coalesce_into_one_fetch() -> None:
    cache: TokenCache[str] = TokenCache(10)
    calls = 0
    release = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await release.wait()
        return "shared", 60.0

    tasks = [asyncio.create_task(cache.get_or_fetch("k", fetch)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert {value for value, _ in results} == {"shared"}
    sources = [source for _, source in results]
    assert sources.count("miss") == 1
    assert sources.count("coalesced") == 99


async def test_different_keys_do_not_share() -> None:
    cache: TokenCache[str] = TokenCache(10)

    def fetcher(value: str):  # type: ignore[no-untyped-def]
        async def fetch() -> tuple[str, float]:
            await asyncio.sleep(0.01)
            return value, 60.0

        return fetch

    a, b = await asyncio.gather(
        cache.get_or_fetch(("user-a", "aud"), fetcher("token-a")),
        cache.get_or_fetch(("user-b", "aud"), fetcher("token-b")),
    )
    assert a == ("token-a", "miss")
    assert b == ("token-b", "miss")


async def test_error_reaches_every_waiter_and_is_not_cached() -> None:
    cache: TokenCache[str] = TokenCache(10)
    calls = 0

    async def failing() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("sts down")

    results = await asyncio.gather(
        *(cache.get_or_fetch("k", failing) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)

    async def working() -> tuple[str, float]:
        return "recovered", 60.0

    assert await cache.get_or_fetch("k", working) == ("recovered", "miss")


async def test_negative_entries_expire() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(10, negative=(Refused,), negative_ttl_s=5, clock=clock)
    calls = 0

    async def refusing() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        raise Refused("audience not allowed")

    for _ in range(3):
        with pytest.raises(Refused):
            await cache.get_or_fetch("k", refusing)
    assert calls == 1
    clock.now += 6
    with pytest.raises(Refused):
        await cache.get_or_fetch("k", refusing)
    assert calls == 2


async def test_cancelled_first_waiter_does_not_cancel_fetch_for_others() -> None:
    cache: TokenCache[str] = TokenCache(10)
    release = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        await release.wait()
        return "done", 60.0

    first = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == ("done", "coalesced")
    assert cache.get("k") == "done"


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(0)
