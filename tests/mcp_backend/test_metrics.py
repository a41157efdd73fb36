"""The backend's tool metrics say which cluster a call went to, from a bounded label set.

Real calls with real tokens of clusters A and B through the real ``mcp`` client; the counters are
read from the running backend's own registry (what ``/metrics`` renders).
"""

from __future__ import annotations

import httpx2

from tests.mcp_backend.conftest import NS, NS_B, RunningBackend, Tokens, mcp_client


def _calls(running: RunningBackend, tool: str, cluster: str, outcome: str) -> float:
    value = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_tool_calls_total", {"tool": tool, "cluster": cluster, "outcome": outcome}
    )
    return value or 0.0


def _timed(running: RunningBackend, tool: str, cluster: str) -> float:
    value = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_tool_duration_seconds_count", {"tool": tool, "cluster": cluster}
    )
    return value or 0.0


async def test_calls_are_counted_and_timed_per_tool_and_cluster(
    backend: RunningBackend, tokens: Tokens
) -> None:
    tool = "pods_list_in_namespace"
    before = {
        (c, o): _calls(backend, tool, c, o)
        for c in ("cluster-a", "cluster-b", "unknown")
        for o in ("ok", "error")
    }
    timed = {c: _timed(backend, tool, c) for c in ("cluster-a", "cluster-b", "unknown")}
    async with mcp_client(backend.url, tokens.admin) as client:
        default = await client.call_tool(tool, {"namespace": NS})
        named = await client.call_tool(tool, {"namespace": NS, "context": "cluster-a"})
        made_up = await client.call_tool(tool, {"namespace": NS, "context": "evil\ncluster"})
    async with mcp_client(backend.url, tokens.admin_b) as client:
        on_b = await client.call_tool(tool, {"namespace": NS_B, "context": "cluster-b"})
    assert not default.is_error
    assert not named.is_error
    assert not on_b.is_error
    assert made_up.is_error
    assert _calls(backend, tool, "cluster-a", "ok") == before["cluster-a", "ok"] + 2
    assert _calls(backend, tool, "cluster-b", "ok") == before["cluster-b", "ok"] + 1
    # a context naming no configured cluster is one bounded label, never the caller's text
    assert _calls(backend, tool, "unknown", "error") == before["unknown", "error"] + 1
    assert _timed(backend, tool, "cluster-a") == timed["cluster-a"] + 2
    assert _timed(backend, tool, "cluster-b") == timed["cluster-b"] + 1
    assert _timed(backend, tool, "unknown") == timed["unknown"] + 1
    async with httpx2.AsyncClient() as http:
        exposed = (await http.get(f"{backend.base}/metrics")).text
    assert "evil" not in exposed
    series = f'kmg_backend_tool_calls_total{{cluster="cluster-b",outcome="ok",tool="{tool}"}}'
    assert series in exposed
