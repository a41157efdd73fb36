"""The calls the fault tests make: a tool call through the real ``mcp`` client (whether it
failed, its text, recorded for the session's credential leak scan, and how long it took), and the
token exchange's ``/check/mcp`` for the backend's audience.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.mcp_backend.conftest import mcp_client, text_of
from tests.testbed import leak_scan
from tests.testbed.identity_plan import BACKEND_AUDIENCE


async def timed_call(
    url: str, token: str, tool: str, args: dict[str, Any]
) -> tuple[bool, str, float]:
    started = time.monotonic()
    async with mcp_client(url, token) as client:
        result = await client.call_tool(tool, args)
    text = text_of(result)
    leak_scan.record_output(f"{tool} {args}", text)
    return bool(result.is_error), text, time.monotonic() - started


async def token_exchange_check(
    http: aiohttp.ClientSession, url: str, token: str
) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}", "x-mcp-servername": BACKEND_AUDIENCE}
    async with http.post(f"{url}/check/mcp", headers=headers) as resp:
        return resp.status, await resp.json()
