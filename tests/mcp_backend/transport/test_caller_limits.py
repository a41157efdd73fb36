"""Per-user concurrency (``max_concurrent_calls_per_user``): who counts as one user, and the
limit played with real tokens of cluster A against the real backend."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from mcp_backend.transport.caller_limits import caller_key
from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of, wait_for
from tests.testbed.cluster import Cluster


def _jwt(claims: dict[str, Any], signature: str = "sig") -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.{signature}"


def test_one_user_is_the_issuer_and_subject_of_the_token() -> None:
    iss = "https://kc.example/realms/mcp"
    alice = caller_key(_jwt({"iss": iss, "sub": "alice", "jti": "1"}))
    # Another token of the same user (other jti, exp, signature): the same budget.
    assert caller_key(_jwt({"iss": iss, "sub": "alice", "jti": "2", "exp": 9}, "other")) == alice
    assert caller_key(_jwt({"iss": iss, "sub": "bob"})) != alice
    assert caller_key(_jwt({"iss": "https://other.example", "sub": "alice"})) != alice
    # Tokens without both claims, opaque tokens, and garbage count as themselves.
    no_sub = _jwt({"iss": iss})
    assert caller_key(no_sub) == caller_key(no_sub) != caller_key(_jwt({"iss": iss, "x": 1}))
    assert caller_key("opaque-a") != caller_key("opaque-b")
    assert caller_key("a.!!!.c").startswith("token:")
    # Nothing of the token or its claims shows in the key.
    assert "alice" not in alice
    assert iss not in alice


async def test_a_user_gets_at_most_the_limit_of_calls_at_once(
    backend_factory: Any,
    tokens: Tokens,
    cluster_a: Cluster,
    service_account_token: Any,
    workloads: dict[str, Any],
) -> None:
    """Two slow calls of the admin account fill its budget of 2: a third call, even with a fresh
    token of the same account, is refused at once with a clear message, while another user is
    served meanwhile; once the slow calls end, the account is served again."""
    running = await backend_factory(max_concurrent_calls_per_user=2)
    limiter = running.backend.handlers.limiter
    second_token = await service_account_token(
        cluster_a, name="mcpb-admin", cluster_role="cluster-admin", cluster_wide=True
    )
    assert second_token != tokens.admin
    assert caller_key(second_token) == caller_key(tokens.admin)
    pod = workloads["web_pods"][0]
    slow = {"name": pod, "namespace": NS, "command": ["sleep", "3"]}

    async def call(token: str, tool: str, args: dict[str, Any]) -> Any:
        async with mcp_client(running.url, token) as client:
            return await client.call_tool(tool, args)

    sleepers = [asyncio.create_task(call(tokens.admin, "pods_exec", slow)) for _ in range(2)]

    async def both_running() -> bool:
        return limiter.running(caller_key(tokens.admin)) == 2

    await wait_for(both_running, "two calls of the admin account running", within=20)
    refused = await call(second_token, "pods_list_in_namespace", {"namespace": NS})
    other_user = await call(tokens.viewer, "pods_list_in_namespace", {"namespace": NS})
    assert limiter.running(caller_key(tokens.admin)) == 2  # the sleepers were still running
    slept = await asyncio.gather(*sleepers)
    served_again = await call(second_token, "pods_list_in_namespace", {"namespace": NS})
    assert refused.is_error
    assert text_of(refused).startswith(
        "too many tool calls at once: this user already has 2 running, the most this server "
        "runs for one user (setting max_concurrent_calls_per_user)"
    )
    assert not other_user.is_error, text_of(other_user)
    assert all(not r.is_error for r in slept), [text_of(r) for r in slept]
    assert not served_again.is_error, text_of(served_again)
    assert limiter.running(caller_key(tokens.admin)) == 0
    outcomes = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_tool_calls_total",
        {"tool": "pods_list_in_namespace", "cluster": "cluster-a", "outcome": "busy"},
    )
    assert outcomes == 1
