"""Property-based tests (hypothesis, bounded example counts) of the real MCP backend's tools: any
arguments to any tool get a JSON-RPC result or error, never a 5xx nor an internal error (with a
token that may do nothing on cluster A, so fuzzing changes nothing).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.reliability.fuzzing import (
    HTTP,
    bounded_answer,
    json_values,
)

pytestmark = pytest.mark.timeout(900)

TOOL_NAMES = [
    "pods_list", "pods_get", "pods_log", "pods_exec", "pods_delete", "pods_run", "pods_top",
    "resources_list", "resources_get", "resources_create_or_update", "resources_delete",
    "resources_scale", "events_list", "namespaces_list", "nodes_log", "nodes_top",
    "nodes_stats_summary", "configuration_view", "configuration_contexts_list", "helm_list",
    "helm_install", "helm_uninstall", "helm_status", "helm_history", "helm_upgrade",
    "helm_rollback", "rollout_status", "rollout_history", "rollout_restart", "rollout_undo",
    "can_i", "workload_diagnose", "no_such_tool",
]  # fmt: skip


@pytest.fixture(scope="module")
async def nobody_backend(cluster_a: Any, service_account_token: Any) -> Any:
    """The real backend with a token that may do nothing on cluster A (fuzzing changes nothing)."""
    from mcp_backend.config import Settings
    from tests.mcp_backend.conftest import cluster_entry, start_backend, stop_backend
    from tests.testbed import build

    token = await service_account_token(cluster_a, name="rel-fuzz-nobody")
    running = await start_backend(
        Settings.model_validate(
            {
                "clusters": [cluster_entry(cluster_a, default=True)],
                "request_timeout_s": 5,
                "helm_binary": str(build.binary("helm")),
                "helm_timeout_s": 10,
            }
        )
    )
    yield running, token
    await stop_backend(running)


@HTTP
@given(
    tool=st.sampled_from(TOOL_NAMES),
    arguments=st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(
                ["name", "namespace", "context", "apiVersion", "kind", "labelSelector",
                 "fieldSelector", "resource", "command", "tail", "limit", "output", "scale",
                 "values", "chart", "continue", "container", "query", "tailLines", "since",
                 "sinceTime", "grep", "grepRegex", "dryRun", "revision", "verb", "max",
                 "reuse_values"]
            ),
            json_values,
            max_size=6,
        ),
    ),
)  # fmt: skip
async def test_backend_tool_arguments(nobody_backend: Any, tool: str, arguments: Any) -> None:
    running, token = nobody_backend
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        status, text, _ = await bounded_answer(
            http,
            "POST",
            running.url,
            json=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
        )
    assert status < 500, (status, text[:300], tool, arguments)
    answer = json.loads(text)
    assert "result" in answer or "error" in answer
    if "result" in answer:
        content = "".join(c.get("text", "") for c in answer["result"]["content"])
        assert "internal error" not in content, (tool, arguments, content[:300])
    await asyncio.sleep(0)
