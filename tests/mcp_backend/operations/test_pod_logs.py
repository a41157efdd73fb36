"""``pods_log`` filters against cluster A: a kwok pod whose container ``scripted`` logs what the
test writes (CRI format, timestamps chosen by the test); kwok applies ``sinceSeconds`` /
``sinceTime`` / ``tailLines`` with the kubelet's own log reader. ``grep`` is checked against the
same log read directly from the API server, and for the caller's RBAC."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from mcp_backend.operations.pod_logs import LineFilter, grep_stream
from tests.mcp_backend.conftest import NS, Tokens, mcp_client, text_of, wait_for
from tests.testbed.cluster import SCRIPTED_CONTAINER, Cluster

POD = "logs-scripted"
FILLER = 4_000  # request lines between two events


def _stamp(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _script(now: dt.datetime) -> list[tuple[dt.datetime, str]]:
    """(time, message) of every line, oldest first."""
    events = [
        (now - dt.timedelta(hours=3), "boot: starting version 1.2.3"),
        (now - dt.timedelta(hours=2), "ERROR: disk full on /data"),
        (now - dt.timedelta(minutes=45), "warn: slow response from db"),
        (now - dt.timedelta(minutes=5), "error: timeout talking to db"),
        (now - dt.timedelta(minutes=1), "info: recovered"),
    ]
    lines: list[tuple[dt.datetime, str]] = []
    for i, (at, message) in enumerate(events):
        lines.append((at, message))
        if i < 2:  # request lines between the first three events (none near 'since' bounds)
            step = (events[i + 1][0] - at) / (FILLER + 1)
            lines += [(at + step * (j + 1), f"GET /api/items/{j} 200") for j in range(FILLER)]
    return lines


def _write(path: Path, lines: list[tuple[dt.datetime, str]]) -> None:
    path.write_text("".join(f"{_stamp(at)} stdout F {message}\n" for at, message in lines))


@pytest.fixture(scope="module")
async def scripted_pod(cluster_a: Cluster, workloads: dict[str, Any]) -> str:
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespaced_pod(
                NS,
                {
                    "metadata": {"name": POD},
                    "spec": {
                        "containers": [
                            {"name": SCRIPTED_CONTAINER, "image": "registry.k8s.io/pause:3.10"}
                        ],
                        "nodeSelector": {"type": "kwok"},
                    },
                },
            )

        async def running() -> bool:
            pod = await core.read_namespaced_pod(POD, NS)
            return bool(pod.status.phase == "Running")

        await wait_for(running, "the scripted pod Running")
    return POD


@pytest.fixture
def script(cluster_a: Cluster, scripted_pod: str) -> list[tuple[dt.datetime, str]]:
    lines = _script(dt.datetime.now(dt.UTC))
    _write(cluster_a.scripted_log_file, lines)
    return lines


async def _direct(cluster: Cluster, **params: str | int) -> list[str]:
    """The log as the API server serves it (admin, no backend), as messages."""
    query = urllib.parse.urlencode(params)
    path = f"/api/v1/namespaces/{NS}/pods/{POD}/log?{query}"
    status, text = await asyncio.to_thread(cluster.admin_request, "GET", path)
    assert status == 200, text
    return text.splitlines()


def _messages(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("[", "("))]


async def test_since_and_since_time_match_the_api_servers_own_answer(
    connect: Any, tokens: Tokens, cluster_a: Cluster, script: list[tuple[dt.datetime, str]]
) -> None:
    now = dt.datetime.now(dt.UTC)
    async with connect(tokens.ns_reader) as client:
        recent = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "since": "10m", "tail": 0}
        )
        moment = (now - dt.timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
        since_time = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "sinceTime": moment, "tail": 3}
        )
    assert not recent.is_error, text_of(recent)
    got = _messages(text_of(recent))
    assert got == ["error: timeout talking to db", "info: recovered"]
    assert got == await _direct(cluster_a, sinceSeconds=600)
    assert not since_time.is_error, text_of(since_time)
    assert _messages(text_of(since_time)) == [
        "warn: slow response from db",
        "error: timeout talking to db",
        "info: recovered",
    ]
    assert _messages(text_of(since_time)) == await _direct(cluster_a, sinceTime=moment, tailLines=3)


async def test_grep_substring_regex_tail_and_window(
    connect: Any, tokens: Tokens, script: list[tuple[dt.datetime, str]]
) -> None:
    async with connect(tokens.ns_reader) as client:
        plain = await client.call_tool("pods_log", {"name": POD, "namespace": NS, "grep": "error"})
        regex = await client.call_tool(
            "pods_log",
            {"name": POD, "namespace": NS, "grep": "(?i)^error: (disk|timeout)", "grepRegex": True},
        )
        windowed = await client.call_tool(
            "pods_log",
            {"name": POD, "namespace": NS, "grep": "(?i)error", "grepRegex": True, "since": "1h"},
        )
        many = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "grep": "GET /api/items/", "tail": 3}
        )
        none = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "grep": "no such text"}
        )
    # Case-sensitive substring: "ERROR: disk full" does not contain "error".
    assert _messages(text_of(plain)) == ["error: timeout talking to db"]
    assert _messages(text_of(regex)) == [
        "ERROR: disk full on /data",
        "error: timeout talking to db",
    ]
    assert regex.structured_content["scannedLines"] == len(script)
    assert _messages(text_of(windowed)) == ["error: timeout talking to db"]
    assert windowed.structured_content["scannedLines"] < len(script)
    gets = [m for _, m in script if m.startswith("GET /api/items/")]
    assert _messages(text_of(many)) == gets[-3:]
    assert many.structured_content["matches"] == len(gets)
    assert many.structured_content["shown"] == 3
    assert f"[3 of {len(gets)} lines containing" in text_of(many)
    assert not none.is_error
    assert "no line of the log" in text_of(none)
    assert none.structured_content["matches"] == 0


async def test_grep_searches_past_the_output_cap_within_its_own_bounds(
    backend_factory: Any, tokens: Tokens, cluster_a: Cluster, scripted_pod: str
) -> None:
    """A match near the start of a log far larger than the answer's cap is found by grep (the
    stream is filtered as it arrives); a backend with a smaller search window says what it did
    not search."""
    now = dt.datetime.now(dt.UTC)
    lines = [(now - dt.timedelta(minutes=30), "panic: needle in the haystack")]
    lines += [(now - dt.timedelta(minutes=29), "x" * 200 + f" line {i}") for i in range(20_000)]
    _write(cluster_a.scripted_log_file, lines)
    small = await backend_factory(log_grep_max_lines=1_000)
    default = await backend_factory()
    args = {"name": POD, "namespace": NS, "grep": "needle"}
    async with mcp_client(default.url, tokens.ns_reader) as client:
        found = await client.call_tool("pods_log", args)
        plain = await client.call_tool("pods_log", {"name": POD, "namespace": NS})
    async with mcp_client(small.url, tokens.ns_reader) as client:
        window = await client.call_tool("pods_log", args)
    assert _messages(text_of(found)) == ["panic: needle in the haystack"]
    assert found.structured_content["scannedBytes"] > 4_000_000
    assert "needle" not in text_of(plain)  # without grep: the last 100 lines
    assert window.structured_content["matches"] == 0
    assert window.structured_content["scannedLines"] == 1_000
    assert "only the last 1000 lines of the log were searched" in text_of(window)


async def test_a_pathological_pattern_is_matched_in_linear_time(
    connect: Any, tokens: Tokens, cluster_a: Cluster, scripted_pod: str
) -> None:
    """'(a+)+$' against a long run of 'a' ending in 'b' takes exponential time in a backtracking
    engine; RE2 answers at once (pytest-timeout is the backstop)."""
    now = dt.datetime.now(dt.UTC)
    _write(cluster_a.scripted_log_file, [(now, "a" * 5_000 + "b"), (now, "aaaa")])
    async with connect(tokens.ns_reader) as client:
        result = await client.call_tool(
            "pods_log",
            {"name": POD, "namespace": NS, "grep": "^(a+)+$", "grepRegex": True},
        )
        backref = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "grep": r"(a)\1", "grepRegex": True}
        )
    assert _messages(text_of(result)) == ["aaaa"]
    assert backref.is_error
    assert "RE2 syntax" in text_of(backref)


async def test_log_filters_refusals_and_bad_arguments(
    connect: Any, tokens: Tokens, script: list[tuple[dt.datetime, str]]
) -> None:
    async with connect(tokens.nobody) as client:
        refused = await client.call_tool("pods_log", {"name": POD, "namespace": NS, "grep": "x"})
    async with connect(tokens.ns_reader) as client:
        elsewhere = await client.call_tool(
            "pods_log", {"name": POD, "namespace": "default", "grep": "x"}
        )
        both = await client.call_tool(
            "pods_log",
            {"name": POD, "namespace": NS, "since": "5m", "sinceTime": "2025-01-01T00:00:00Z"},
        )
        bad_since = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "since": "five minutes"}
        )
        bad_time = await client.call_tool(
            "pods_log", {"name": POD, "namespace": NS, "sinceTime": "yesterday"}
        )
    assert refused.is_error
    assert "403" in text_of(refused)
    assert "pods/log" in text_of(refused)
    assert "mcpb-nobody" in text_of(refused)
    assert elsewhere.is_error
    assert "namespace 'default'" in text_of(elsewhere)
    assert both.is_error
    assert "not both" in text_of(both)
    assert bad_since.is_error
    assert "not a duration" in text_of(bad_since)
    assert bad_time.is_error
    assert "RFC 3339" in text_of(bad_time)


class _Chunks:
    """Bytes handed out in the given pieces, as a network stream does."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        return self.pieces.pop(0) if self.pieces else b""


async def test_grep_stream_joins_lines_split_across_chunks() -> None:
    data = b"alpha one\nbeta two\nalpha three\n" + b"alpha " + b"z" * 200_000 + b"\nalpha end"
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    result = await grep_stream(
        _Chunks(pieces), LineFilter("alpha", regex=False), keep=2, budget=10**6
    )
    assert result.matches == 4  # the 200 kB line is matched in 64 KiB pieces: its first matches
    assert result.lines[0].startswith("alpha zzz")
    assert result.lines[-1] == "alpha end"
    assert result.scanned_bytes == len(data)
    assert len(result.lines) == 2
