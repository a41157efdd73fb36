"""Helpers of the reload tests (``test_reload.py``, ``test_bundles.py``): deny-list data, the
service's settings with fast reloads, one ``/v1/decide`` call, metrics, and a bounded poll."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway_plugins.policy.config import PolicySettings, ReloadSettings
from tests.gateway_plugins.policy.running import (
    POLICIES,
    SERVER,
    RunningPolicy,
    policy_settings,
    verified_by_opa,
)

DENY_FILE = "data/deny_list.json"
FAST = ReloadSettings(watch_files=True, interval_s=0.2)


def deny_list_with(*entries: dict[str, Any]) -> str:
    base = json.loads((POLICIES / DENY_FILE).read_text())["deny_list"]
    return json.dumps({"deny_list": [*base, *entries]})


def deny_tool(tool: str, reason: str, user: str = "mcp") -> dict[str, Any]:
    return {"servers": [SERVER], "tools": [tool], "users": [user], "reason": reason}


def reload_settings(keycloak: Any, work: Path, **update: Any) -> PolicySettings:
    settings = policy_settings(keycloak, work)
    return settings.model_copy(
        update={"reload": FAST, "embedded_verify": verified_by_opa(), **update}
    )


async def post_decide(
    http: aiohttp.ClientSession, svc: RunningPolicy, token: str, tool: str
) -> tuple[int, dict[str, Any]]:
    body = {"server": SERVER, "tool": tool, "token": token, "arguments": {"namespace": "default"}}
    async with http.post(f"{svc.url}/v1/decide", json=body) as resp:
        return resp.status, await resp.json()


async def metric_sum(http: aiohttp.ClientSession, svc: RunningPolicy, name: str) -> float:
    """Sum of a metric's samples whose line starts with ``name`` (labels included)."""
    async with http.get(f"{svc.url}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll ``check``; a bound against hanging, not a timing assertion (see bench/)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)


async def allowed(http: aiohttp.ClientSession, svc: RunningPolicy, token: str, tool: str) -> bool:
    status, answer = await post_decide(http, svc, token, tool)
    assert status == 200, answer
    return bool(answer["allow"])


async def policy_revision(http: aiohttp.ClientSession, svc: RunningPolicy) -> str:
    async with http.get(f"{svc.url}/metrics") as resp:
        text = await resp.text()
    (line,) = [x for x in text.splitlines() if x.startswith("policy_revision_info{")]
    return line.split('revision="', 1)[1].split('"', 1)[0]


async def denies(http: aiohttp.ClientSession, svc: RunningPolicy, token: str, tool: str) -> bool:
    return not await allowed(http, svc, token, tool)
