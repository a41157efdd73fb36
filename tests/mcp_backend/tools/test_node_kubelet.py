"""``nodes_log`` and ``nodes_stats_summary`` against a real kubelet (v1.36, with containerd): node
``kubelet-node-0`` of cluster B (``tests/testbed/kubelet.py``), reached through B's node proxy,
called with a real MCP client and compared with what the kubelet itself serves."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_backend.conftest import Tokens, text_of
from tests.testbed.cluster import Cluster
from tests.testbed.fixtures_kube import ServiceAccountTokenFactory
from tests.testbed.kubelet import Kubelet

B = {"context": "cluster-b"}
LINES = [f"line {i} of a node log written by the test" for i in range(1, 8)]
LOG_TEXT = "".join(f"{line}\n" for line in LINES)


@pytest.fixture
def node_log(real_kubelet: Kubelet) -> Iterator[Path]:
    """A log file of the test's own in the node's /var/log (removed afterwards)."""
    path = real_kubelet.var_log / f"kmg-testbed-{secrets.token_hex(4)}.log"
    path.write_text(LOG_TEXT)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


async def test_nodes_log_reads_a_file_of_the_nodes_var_log(
    connect: Any, tokens: Tokens, real_kubelet: Kubelet, node_log: Path
) -> None:
    node = real_kubelet.node_name
    async with connect(tokens.admin_b) as client:
        tail = await client.call_tool(
            "nodes_log", {"name": node, "query": node_log.name, "tailLines": 3, **B}
        )
        default = await client.call_tool("nodes_log", {"name": node, "query": node_log.name, **B})
        whole = await client.call_tool(
            "nodes_log", {"name": node, "query": f"/{node_log.name}", "tailLines": 0, **B}
        )
        by_service_name = await client.call_tool(
            "nodes_log", {"name": node, "query": node_log.stem, "tailLines": 2, **B}
        )
    assert not tail.is_error, text_of(tail)
    assert text_of(tail) == "".join(f"{line}\n" for line in LINES[-3:])
    assert text_of(default) == LOG_TEXT  # default tailLines=100: the 7 lines
    assert text_of(whole) == LOG_TEXT
    # What the kubelet itself serves for that query (its heuristics: <name>, <name>.log, ...).
    status, direct = real_kubelet.get("/logs/", {"query": node_log.name})
    assert (status, direct) == (200, LOG_TEXT)
    # A name without ".log": the kubelet finds <name>.log.
    assert text_of(by_service_name) == "".join(f"{line}\n" for line in LINES[-2:])


async def test_nodes_log_reads_a_nested_file(
    connect: Any, tokens: Tokens, real_kubelet: Kubelet
) -> None:
    """A path with a directory is a file query for the kubelet: it refuses options with it (the
    tool tails the file itself), and v1.36 refuses it absolute (the tool makes it relative)."""
    directory = real_kubelet.var_log / f"kmg-testbed-{secrets.token_hex(4)}"
    directory.mkdir()
    log = directory / "app.log"
    log.write_text(LOG_TEXT)
    try:
        async with connect(tokens.admin_b) as client:
            absolute = await client.call_tool(
                "nodes_log",
                {"name": real_kubelet.node_name, "query": f"/{directory.name}/app.log", **B},
            )
            tail = await client.call_tool(
                "nodes_log",
                {
                    "name": real_kubelet.node_name,
                    "query": f"{directory.name}/app.log",
                    "tailLines": 2,
                    **B,
                },
            )
        # The kubelet's own answers to what the tool had to avoid:
        refused_options = real_kubelet.get(
            "/logs/", {"query": f"{directory.name}/app.log", "tailLines": "2"}
        )
        refused_absolute = real_kubelet.get("/logs/", {"query": f"/{directory.name}/app.log"})
    finally:
        log.unlink()
        directory.rmdir()
    assert not absolute.is_error, text_of(absolute)
    assert text_of(absolute) == LOG_TEXT
    assert text_of(tail) == "".join(f"{line}\n" for line in LINES[-2:])
    assert refused_options[0] == 406
    assert "cannot specify file with options" in refused_options[1]
    assert refused_absolute[0] == 406
    assert "path escapes from parent" in refused_absolute[1]


KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.-]+:\d+\] ")


async def test_nodes_log_kubelet_service(
    connect: Any, tokens: Tokens, real_kubelet: Kubelet
) -> None:
    """``query=kubelet`` on a node without journald: the kubelet serves /var/log/kubelet.log, its
    own log, and refuses tailLines there (the tool tails it itself)."""
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool(
            "nodes_log", {"name": real_kubelet.node_name, "query": "kubelet", "tailLines": 5, **B}
        )
    assert not result.is_error, text_of(result)
    lines = text_of(result).splitlines()
    assert len(lines) == 5
    assert all(KLOG_LINE.match(line) for line in lines), lines
    own_log = real_kubelet.log_file.read_text().splitlines()
    assert all(line in own_log for line in lines)
    status, notice = real_kubelet.get("/logs/", {"query": "kubelet", "tailLines": "5"})
    assert status == 200
    assert "options present and query resolved to log files for [kubelet]" in notice


async def test_nodes_log_missing_file(connect: Any, tokens: Tokens, real_kubelet: Kubelet) -> None:
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool(
            "nodes_log", {"name": real_kubelet.node_name, "query": "kmg-no-such-log", **B}
        )
    # The kubelet answers 200 with its own notice.
    assert not result.is_error
    assert text_of(result).strip() == "log not found for kmg-no-such-log"


# Figures of the Summary API that do not change between two reads.
def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    node = summary["node"]
    return {
        "nodeName": node["nodeName"],
        "startTime": node["startTime"],
        "fs": {k: node["fs"][k] for k in ("capacityBytes", "inodes")},
        "imageFs": {k: node["runtime"]["imageFs"][k] for k in ("capacityBytes", "inodes")},
        "maxpid": node["rlimit"]["maxpid"],
        "systemContainers": sorted(c["name"] for c in node.get("systemContainers") or []),
        "pods": summary.get("pods"),
    }


async def test_nodes_stats_summary_from_the_real_kubelet(
    connect: Any, tokens: Tokens, real_kubelet: Kubelet
) -> None:
    async with connect(tokens.admin_b) as client:
        result = await client.call_tool(
            "nodes_stats_summary", {"name": real_kubelet.node_name, **B}
        )
    assert not result.is_error, text_of(result)
    summary = result.structured_content
    assert summary["node"]["nodeName"] == real_kubelet.node_name
    assert json.loads(text_of(result)) == summary
    status, body = real_kubelet.get("/stats/summary")
    assert status == 200
    direct = json.loads(body)
    assert _stable(summary) == _stable(direct)
    node = summary["node"]
    assert node["cpu"]["usageCoreNanoSeconds"] > 0
    assert 0 < node["memory"]["workingSetBytes"] <= node["memory"]["usageBytes"]
    assert node["fs"]["capacityBytes"] > node["fs"]["availableBytes"] > 0
    assert summary["pods"] == []  # nothing is scheduled on the tainted node
    # Cumulative CPU time only grows: the tool's reading is not after the direct one.
    assert node["cpu"]["usageCoreNanoSeconds"] <= direct["node"]["cpu"]["usageCoreNanoSeconds"]


async def test_node_proxy_refused_for_viewer_on_b(
    connect: Any,
    real_kubelet: Kubelet,
    cluster_b: Cluster,
    service_account_token: ServiceAccountTokenFactory,
) -> None:
    """The API server refuses nodes/proxy to a ``view`` user: the kubelet is never asked."""
    viewer_b = await service_account_token(
        cluster_b, name="mcpb-viewer", cluster_role="view", cluster_wide=True
    )
    async with connect(viewer_b) as client:
        stats = await client.call_tool("nodes_stats_summary", {"name": real_kubelet.node_name, **B})
        log = await client.call_tool(
            "nodes_log", {"name": real_kubelet.node_name, "query": "kubelet", **B}
        )
    for result in (stats, log):
        assert result.is_error
        assert "403" in text_of(result)
        assert "nodes/proxy" in text_of(result)


async def test_nodes_log_of_a_huge_file_reads_its_end_in_bounded_memory(
    connect: Any, tokens: Tokens, real_kubelet: Kubelet
) -> None:
    """The kubelet sends a log file whole (it cannot tail files): 3 MiB here, more than the
    window of 256 KiB the backend keeps while reading. The last lines come out right, with a
    note that the log was longer."""
    lines = [f"{i:07d} " + "x" * 90 for i in range(32 * 1024)]  # 98 bytes a line, 3.1 MiB
    path = real_kubelet.var_log / f"kmg-testbed-big-{secrets.token_hex(4)}.log"
    path.write_text("".join(f"{line}\n" for line in lines))
    try:
        async with connect(tokens.admin_b) as client:
            got = await client.call_tool(
                "nodes_log",
                {"name": real_kubelet.node_name, "query": path.name, "tailLines": 4, **B},
            )
            everything = await client.call_tool(
                "nodes_log",
                {"name": real_kubelet.node_name, "query": path.name, "tailLines": 0, **B},
            )
    finally:
        path.unlink(missing_ok=True)
    note = "[only the last 262144 bytes of a longer log were read: its end]\n"
    assert text_of(got) == note + "".join(f"{line}\n" for line in lines[-4:])
    # All lines asked for: the end of the window, cut to the output cap at a line start.
    text = text_of(everything)
    assert text.startswith("[output truncated: showing the last ")
    assert text.endswith(f"{lines[-1]}\n")
    shown = text.split("\n", 1)[1]
    assert shown.startswith(lines[-len(shown.splitlines())])
