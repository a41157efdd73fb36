"""``make demo`` (``python -m tests.testbed.demo``): the whole flow on this machine.

Starts Keycloak, clusters A and B, OPA, our services (two MCP backends: server A for cluster A,
server B for cluster B), the real MCP Gateway broker/router v0.9.0 and Envoy (see
``tests/testbed/mcp_gateway/start.py``); prints the MCP URL, how to get a token for the demo
users and a client config; then runs a scripted session with the real ``mcp`` Python client
through Envoy:

1. the aggregated ``tools/list`` of both servers (prefixes ``a_`` and ``b_``), filtered per demo
   user by the policy's signed header (``mcp``: every tool, ``viewer``: read-only);
2. an allowed call (``mcp`` lists the pods of namespace ``demo`` on cluster A);
3. a denied call whose reason the client prints (``viewer`` tries ``a_pods_delete``: the policy's
   JSON-RPC error);
4. a prompt (``b_cluster-health-check``, granted by the role ``prompt:cluster-health-check``);
5. a call on cluster B (``b_pods_list_in_namespace``): server B reaches cluster B, which trusts
   only realm ``cluster-b``, through the cross-domain exchange.

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
from mcp.shared.exceptions import MCPError

from tests.testbed import process
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway
from tests.testbed.mcp_gateway.start import start_stack

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
    a, b = stack.server_a, stack.server_b
    steps: list[Step] = []
    tokens = {user: await asyncio.to_thread(stack.user_token, user) for user in ("mcp", "viewer")}

    say("\n== 1. tools/list: both servers aggregated under their prefixes, filtered per user ==")
    for label, server in (("A", a), ("B", b)):
        say(f"  server {label}: {server.name}, prefix {server.prefix}, cluster {label}")
    listed: dict[str, list[str]] = {}
    prompts: dict[str, list[str]] = {}
    for user, token in tokens.items():
        async with mcp_session(url, token) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            prompts[user] = sorted(p.name for p in (await client.list_prompts()).prompts)
        listed[user] = names
        for server in (a, b):
            mine = [n for n in names if n.startswith(server.prefix)]
            say(f"  {user} on {server.prefix}*: {len(mine)} tools: {', '.join(mine)}")
        say(f"  {user}'s prompts: {', '.join(prompts[user]) or '(none)'}")
    both = all(any(n.startswith(s.prefix) for n in listed["mcp"]) for s in (a, b))
    ok = both and bool(listed["viewer"]) and set(listed["viewer"]) < set(listed["mcp"])
    ok = ok and a.tool("pods_delete") in listed["mcp"]
    ok = ok and a.tool("pods_delete") not in listed["viewer"]
    steps.append(
        Step(
            "filtered aggregated tools/list",
            ok,
            f"mcp {len(listed['mcp'])}, viewer {len(listed['viewer'])} tools of 2 servers",
        )
    )

    tool = a.tool("pods_list_in_namespace")
    say(f"\n== 2. allowed: mcp calls {tool} {{namespace: {DEMO_NAMESPACE}}} (cluster A) ==")
    async with mcp_session(url, tokens["mcp"]) as client:
        result = await client.call_tool(tool, {"namespace": DEMO_NAMESPACE})
    text = text_of(result)
    say(indent(text))
    steps.append(
        Step(
            "allowed call",
            not result.is_error and "web-cluster-a" in text,
            "pods of cluster A listed" if not result.is_error else text[:200],
        )
    )

    tool = a.tool("pods_delete")
    say(f"\n== 3. denied: viewer calls {tool} (the policy's reason reaches the client) ==")
    async with mcp_session(url, tokens["viewer"]) as client:
        try:
            await client.call_tool(tool, {"namespace": DEMO_NAMESPACE, "name": "anything"})
            client_saw = ""
        except MCPError as exc:  # the JSON-RPC error the policy answered, with its reason
            client_saw = str(exc)
    say(f"    the mcp client raises: {client_saw or 'nothing: the call went through (unexpected)'}")
    steps.append(
        Step(
            "denied call, reason shown",
            "holds no role" in client_saw and "pods_delete" in client_saw,
            client_saw[:200] or "not denied",
        )
    )

    prompt = b.tool("cluster-health-check")
    say(f"\n== 4. a prompt: mcp gets {prompt} (granted by role prompt:cluster-health-check) ==")
    async with mcp_session(url, tokens["mcp"]) as client:
        got = await client.get_prompt(prompt, {"namespace": DEMO_NAMESPACE})
    prompt_text = "".join(getattr(m.content, "text", "") for m in got.messages)
    say(indent(prompt_text, limit=6))
    steps.append(
        Step(
            "prompt",
            "health" in prompt_text and prompt not in prompts["viewer"],
            f"{prompt}: {len(got.messages)} message(s); viewer does not list it",
        )
    )

    tool = b.tool("pods_list_in_namespace")
    say(f"\n== 5. cross-domain: mcp calls {tool} (cluster B trusts only realm cluster-b) ==")
    async with mcp_session(url, tokens["mcp"]) as client:
        result = await client.call_tool(tool, {"namespace": DEMO_NAMESPACE})
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
    if stack.trace_collector is not None:
        jaeger = stack.trace_collector.ui_url
        say(f"Traces (Jaeger UI): {jaeger}/search  (services mcp-gateway-envoy, mcp-backend, ...)")
        say(f"  one trace as JSON: curl -s {jaeger}/api/traces/<trace id>")
        say("  (send 'traceparent: 00-<32 hex trace id>-<16 hex>-01' with a call to pick the id)")
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
