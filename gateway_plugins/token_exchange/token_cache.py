"""Bounded LRU cache of exchanged tokens with single-flight misses.

Concurrent requests for the same missing key share ONE fetch. The fetch runs in its own task,
so a waiter that gives up (client disconnect) does not cancel it for the others. Errors of the
``negative`` types are remembered for ``negative_ttl_s`` so a refused exchange is not retried
in a tight loop; any other error is not cached.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

V = TypeVar("V")
Source = Literal["hit", "miss", "coalesced"]


@dataclass
class _Entry(Generic[V]):
    expires_at: float
    value: V | None = None
    error: Exception | None = None


class TokenCache(Generic[V]):
    """``get_or_fetch`` is the API; ``fetch`` returns ``(value, ttl_s)``, ttl <= 0 = do not keep."""

    def __init__(
        self,
        max_entries: int,
        *,
        negative: tuple[type[Exception], ...] = (),
        negative_ttl_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max = max_entries
        self._negative = negative
        self._negative_ttl = negative_ttl_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The cached value (raises a cached refusal); None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        if entry.error is not None:
            raise entry.error
        return entry.value

    def put(self, key: Hashable, value: V, ttl_s: float) -> None:
        if ttl_s > 0:
            self._store(key, _Entry(self._clock() + ttl_s, value=value))

    def _store(self, key: Hashable, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    async def get_or_fetch(
        self, key: Hashable, fetch: Callable[[], Awaitable[tuple[V, float]]]
    ) -> tuple[V, Source]:
        cached = self.get(key)
        if cached is not None:
            return cached, "hit"
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), "coalesced"
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        # Mark the outcome as retrieved even if every waiter went away.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[key] = future
        task = asyncio.ensure_future(self._run(key, fetch, future))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(future), "miss"

    async def _run(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[tuple[V, float]]],
        future: asyncio.Future[V],
    ) -> None:
        try:
            value, ttl_s = await fetch()
        except asyncio.CancelledError:
            future.cancel()  # shutdown: waiters see a cancellation, nothing is cached
            raise
        except Exception as exc:
            if isinstance(exc, self._negative) and self._negative_ttl > 0:
                self._store(key, _Entry(self._clock() + self._negative_ttl, error=exc))
            if not future.done():
                future.set_exception(exc)
        else:
            self.put(key, value, ttl_s)
            if not future.done():
                future.set_result(value)
        finally:
            self._inflight.pop(key, None)
