"""The call functions the backend benchmarks drive: MCP ``tools/call`` JSON-RPC POSTs over one
pooled aiohttp session (as a gateway sends them), or real MCP clients of the ``mcp`` package; a
closed loop of such calls; and the check that an answer is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx2
import orjson
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench.backend_stack import CONCURRENCY, NS, PODS

Call = Callable[[int], Awaitable[None]]

GET_ARGS = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": NS}
RPC_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def check(ok: bool, what: str, answer: Any) -> None:
    if not ok:
        raise RuntimeError(f"{what} gave a wrong answer: {str(answer)[:300]}")


async def closed_loop(
    call: Call, total: int, concurrency: int = CONCURRENCY
) -> tuple[list[float], list[int], float]:
    """Run ``total`` calls with ``concurrency`` workers; per-call latency, kind, wall time."""
    latencies: list[float] = []
    kinds: list[int] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)
            kinds.append(i % 2)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, kinds, time.perf_counter() - started


async def jsonrpc_path(
    stack: contextlib.AsyncExitStack, base: str, headers: dict[str, str]
) -> Call:
    """A call function posting MCP ``tools/call`` requests to the backend at ``base`` over one
    pooled aiohttp session, parsing the JSON-RPC answers with orjson: the same client machinery
    as the direct path, as a gateway in front of the backend sends them (stateless mode)."""
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY), headers={**headers, **RPC_HEADERS}
        )
    )
    url = f"{base}/mcp"

    async def via_backend(i: int) -> None:
        tool, args = ("pods_list", {}) if i % 2 == 0 else ("resources_get", GET_ARGS)
        request = {"jsonrpc": "2.0", "id": i, "method": "tools/call"}
        request["params"] = {"name": tool, "arguments": args}
        async with http.post(url, data=orjson.dumps(request)) as resp:
            raw = await resp.read()
        answer = orjson.loads(raw)
        result = answer.get("result") or {}
        ok = resp.status == 200 and not result.get("isError") and bool(result.get("content"))
        if i % 2 == 0:
            ok = ok and (result.get("structuredContent") or {}).get("count", 0) >= PODS
        check(ok, tool, answer)

    return via_backend


async def mcp_path(stack: contextlib.AsyncExitStack, base: str, headers: dict[str, str]) -> Call:
    """A call function driving CONCURRENCY real MCP clients of the backend at ``base``."""
    clients: list[Client] = []
    for _ in range(CONCURRENCY):
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
        client = await stack.enter_async_context(
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy", cache=None
            )
        )
        clients.append(client)
    next_client = iter(range(10**9))

    async def via_backend(i: int) -> None:
        client = clients[next(next_client) % CONCURRENCY]
        if i % 2 == 0:
            result = await client.call_tool("pods_list", {})
            check(
                not result.is_error and result.structured_content["count"] >= PODS,
                "pods_list",
                result,
            )
        else:
            result = await client.call_tool("resources_get", GET_ARGS)
            check(not result.is_error, "resources_get", result)

    return via_backend
