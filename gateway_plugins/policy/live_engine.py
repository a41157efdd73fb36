"""A decision engine whose policy can be replaced while it serves (run-time reloads).

:class:`LiveEngine` stands where the service's engine stands and passes every call to the engine
of the moment. A reload never lets a request see half a policy:

* embedded engine: the new engine is built and checked completely beside the old one, then one
  reference assignment makes it current. Requests already running finish on the old engine
  (closed a while later); the next request uses the new one. The decision cache lives in the
  engine, so it goes with the old policy.
* OPA server engine: the policy lives in OPA, which takes modules and data in separate calls.
  The reload holds the gate exclusively: it waits until requests in flight are answered, holds
  new ones back, pushes modules and data (pushing the previous policy back if OPA refuses),
  then lets requests through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from gateway_plugins.policy.engines import Decision, DecisionEngine

log = logging.getLogger(__name__)

RETIRE_AFTER_S = 30.0  # an old embedded engine is closed this long after a swap


class _Gate:
    """Many requests at once, or one reload alone (requests wait while it runs)."""

    def __init__(self) -> None:
        self._active = 0
        self._reloading = False
        self._open = asyncio.Event()
        self._open.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        while self._reloading:
            await self._open.wait()
        self._active += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._drained.set()

    @contextlib.asynccontextmanager
    async def reload(self) -> AsyncIterator[None]:
        async with self._lock:
            self._reloading = True
            self._open.clear()
            try:
                await self._drained.wait()
                yield
            finally:
                self._reloading = False
                self._open.set()


class LiveEngine:
    """The service's engine: delegates to the current engine; ``swap`` / ``reload_in_place``
    replace its policy. Other engine methods (coroutines) are passed through gated as well."""

    def __init__(self, engine: DecisionEngine) -> None:
        self._engine = engine
        self.name = engine.name
        self.generation = 0
        self._gate = _Gate()
        self._retiring: dict[asyncio.Task[None], DecisionEngine] = {}

    @property
    def current(self) -> DecisionEngine:
        return self._engine

    async def start(self) -> None:
        await self._engine.start()

    async def evaluate(self, doc: Mapping[str, Any]) -> Decision:
        async with self._gate.request():
            return await self._engine.evaluate(doc)

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        async with self._gate.request():
            return await self._engine.allowed_tools(doc)

    async def check_ready(self) -> None:
        async with self._gate.request():
            await self._engine.check_ready()

    def __getattr__(self, name: str) -> Any:
        """Engine methods this class does not name (e.g. newer list entrypoints): the current
        engine's, called through the gate."""
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._engine, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def gated(*args: Any, **kwargs: Any) -> Any:
            async with self._gate.request():
                return await getattr(self._engine, name)(*args, **kwargs)

        return gated

    def swap(self, engine: DecisionEngine) -> None:
        """Make ``engine`` (built and started) current; the old one is closed later."""
        old, self._engine = self._engine, engine
        self.generation += 1
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def reload_in_place(self, apply: Callable[[], Awaitable[None]]) -> None:
        """Run ``apply`` (which changes the current engine's policy) with no request inside."""
        async with self._gate.reload():
            await apply()
            self.generation += 1

    async def _retire(self, engine: DecisionEngine) -> None:
        await asyncio.sleep(RETIRE_AFTER_S)
        await self._close(engine)

    async def _close(self, engine: DecisionEngine) -> None:
        try:
            await engine.close()
        except Exception as exc:  # a failing close must not stop the service
            log.warning("closing a replaced policy engine failed: %s", exc)

    async def close(self) -> None:
        for task, old in list(self._retiring.items()):
            task.cancel()
            await self._close(old)
        self._retiring.clear()
        await self._close(self._engine)
