"""``make demo`` (``python -m tests.testbed.demo``): the whole flow on this machine.

Starts Keycloak, clusters A and B, OPA, our three services, the MCP Gateway router/broker
stand-in and Envoy (see ``tests/testbed/mcp_gateway/stack.py``); prints the MCP URL, how to get a
token for the demo users and a client config; then runs a scripted session with the real ``mcp``
Python client through Envoy:

1. the filtered ``tools/list`` of each demo user (``mcp``: every tool, ``viewer``: read-only);
2. an allowed call (``mcp`` lists the pods of namespace ``demo`` on cluster A);
3. a denied call with the policy's reason (``viewer`` tries ``pods_delete``: HTTP 403);
4. a call on cluster B (``context: cluster-b``), which trusts only realm ``cluster-b``: the
   backend gets the user's token for it through the cross-domain exchange.

Then it keeps the gateway running until Ctrl-C (``--once``: stop after the script). Exit code:
0 when every step gave the expected outcome, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.testbed import process
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway, start_stack

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[demo {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def say(text: str = "") -> None:
    print(text, flush=True)


@asynccontextmanager
async def mcp_session(url: str, token: str) -> AsyncIterator[Client]:
    """A real MCP client (Streamable HTTP) sending ``token`` as its bearer token."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def raw_call(url: str, token: str, tool: str, arguments: dict[str, Any]) -> tuple[int, Any]:
    """One ``tools/call`` as plain HTTP: shows the gateway's status and JSON body as sent."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    async with httpx2.AsyncClient(timeout=60) as http:
        resp = await http.post(
            url,
            json=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
        )
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


def indent(text: str, prefix: str = "    ", limit: int = 12) -> str:
    lines = text.strip().splitlines()
    shown = lines[:limit] + (
        [f"... ({len(lines) - limit} more lines)"] if len(lines) > limit else []
    )
    return "\n".join(prefix + line for line in shown)


async def scripted_session(stack: LocalGateway) -> list[Step]:
    url = stack.mcp_url
    steps: list[Step] = []
    tokens = {user: await asyncio.to_thread(stack.user_token, user) for user in ("mcp", "viewer")}

    say("\n== 1. tools/list, filtered per user by the signed header ==")
    listed: dict[str, list[str]] = {}
    for user, token in tokens.items():
        async with mcp_session(url, token) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
        listed[user] = names
        say(f"  {user}: {len(names)} tools: {', '.join(names)}")
    ok = bool(listed["viewer"]) and set(listed["viewer"]) < set(listed["mcp"])
    ok = ok and "pods_delete" in listed["mcp"] and "pods_delete" not in listed["viewer"]
    steps.append(
        Step(
            "filtered tools/list",
            ok,
            f"mcp {len(listed['mcp'])}, viewer {len(listed['viewer'])} tools",
        )
    )

    say(
        f"\n== 2. allowed: mcp calls pods_list_in_namespace {{namespace: {DEMO_NAMESPACE}}} "
        "on cluster A =="
    )
    async with mcp_session(url, tokens["mcp"]) as client:
        result = await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
    text = text_of(result)
    say(indent(text))
    steps.append(
        Step(
            "allowed call",
            not result.is_error and "web-cluster-a" in text,
            "pods of cluster A listed" if not result.is_error else text[:200],
        )
    )

    say("\n== 3. denied: viewer calls pods_delete (the policy answers 403 with its reason) ==")
    status, body = await raw_call(
        url, tokens["viewer"], "pods_delete", {"namespace": DEMO_NAMESPACE, "name": "anything"}
    )
    say(f"    HTTP {status}: {json.dumps(body)}")
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    async with mcp_session(url, tokens["viewer"]) as client:
        try:
            await client.call_tool("pods_delete", {"namespace": DEMO_NAMESPACE, "name": "x"})
            client_saw = "the call went through (unexpected)"
        except Exception as exc:  # the mcp client surfaces the HTTP 403 as an error
            client_saw = f"{type(exc).__name__}: {exc}"
    say(f"    the mcp client reports: {client_saw[:300]}")
    steps.append(Step("denied call", status == 403 and bool(reason), reason or str(body)[:200]))

    say("\n== 4. cross-domain: mcp lists pods on cluster B (trusts only realm cluster-b) ==")
    async with mcp_session(url, tokens["mcp"]) as client:
        result = await client.call_tool(
            "pods_list_in_namespace", {"namespace": DEMO_NAMESPACE, "context": "cluster-b"}
        )
    text = text_of(result)
    say(indent(text))
    steps.append(
        Step(
            "cluster B via cross-domain exchange",
            not result.is_error and "web-cluster-b" in text,
            "pods of cluster B listed" if not result.is_error else text[:300],
        )
    )
    return steps


def banner(stack: LocalGateway) -> None:
    say("\n" + "=" * 78)
    say(f"MCP endpoint (Envoy): {stack.mcp_url}")
    say("Demo users (demo-only passwords): mcp/mcp (every tool), viewer/viewer (read-only)")
    say("Get a token (short-lived: 5 minutes):")
    say(f"  export KMG_TOKEN=$({stack.token_curl('mcp')})")
    say("  (read-only user: the same with username=viewer password=viewer)")
    say("Client config (Streamable HTTP; put the token in KMG_TOKEN):")
    say(indent(json.dumps(stack.client_config(), indent=2), "  ", limit=40))
    say(f"Logs and configs: {stack.run_dir}")
    say("=" * 78)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="stop after the scripted session")
    parser.add_argument("--port", type=int, default=None, help="Envoy's port (default: free)")
    parser.add_argument(
        "--policy-engine",
        choices=["opa", "embedded"],
        default="opa",
        help="policy decision engine (default opa: a real OPA server)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM behaves like Ctrl-C: clean stop
    stack: LocalGateway | None = None
    rc = 1
    try:
        progress("starting the local gateway stack (cold start: a few minutes on 2 cores)")
        stack = start_stack(
            progress=progress, listen_port=args.port, policy_engine=args.policy_engine
        )
        banner(stack)
        steps = asyncio.run(scripted_session(stack))
        say("\n== summary ==")
        for step in steps:
            say(f"  [{'ok' if step.ok else 'FAILED'}] {step.name}: {step.detail}")
        rc = 0 if all(s.ok for s in steps) else 1
        if not args.once:
            say(f"\nThe gateway keeps running at {stack.mcp_url}. Press Ctrl-C to stop it.")
            while True:
                time.sleep(3600)
        return rc
    except KeyboardInterrupt:
        say("\nstopping ...")
        return rc
    except process.ComponentError as exc:
        say(f"\ndemo failed: {exc}")
        return 1
    finally:
        if stack is not None:
            stack.stop()
        process.stop_all()
        progress("everything stopped")


if __name__ == "__main__":
    sys.exit(main())
