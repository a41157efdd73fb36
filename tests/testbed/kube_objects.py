"""Creating Kubernetes objects idempotently through ``kubernetes_asyncio``: a 409 (the object
already exists) becomes :class:`Conflict`, which callers suppress or answer with a replace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio.client.rest import ApiException


class Conflict(Exception):
    """The object already exists (HTTP 409)."""


async def create(call: Awaitable[Any]) -> Any:
    """Await the create ``call``; a 409 raises :class:`Conflict`."""
    try:
        return await call
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict from exc
        raise


async def apply(create_call: Awaitable[Any], replace: Callable[[], Awaitable[Any]]) -> None:
    """Create, or replace when it already exists."""
    try:
        await create(create_call)
    except Conflict:
        await replace()
