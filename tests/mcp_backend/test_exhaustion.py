"""One user cannot make the backend read (and hold) more than the bounds allow (issue 14, item 3):
the attacks replayed against the real cluster A (kwok runs the exec commands on this machine, so
a pod's command really prints tens of megabytes), the real API server and the real helm CLI.

Memory and the other users' latency under these attacks are measured by ``make bench``
(``bench/scenario_exhaustion.py``); these tests check what each bound does to one call: how much
the backend read from upstream (its ``kmg_backend_upstream_read_bytes_total`` counter, read in
this process, which runs the backend), what the caller is told, and that nothing is lost or
skipped when paging on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.mcp_backend.conftest import (
    CHART_YAML,
    NS,
    RunningBackend,
    Tokens,
    chart_sources,
    mcp_client,
    text_of,
)
from tests.testbed.cluster import Cluster

BIG_NS = "mcpb-big"
CONFIGMAPS = 300  # of about 8 KB each: 2.4 MB in all, a few fit the 40 000-character cap
CONFIGMAP_LINES = 80
HUGE_CONFIGMAP_BYTES = 100 * 1024
SECRETS = 6  # of 40 KB each
CAP = 40_000  # the default output_max_chars
BOUND = 4 * CAP  # pods_exec reads at most this many bytes of output


def _upstream_bytes(running: RunningBackend) -> float:
    value = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_upstream_read_bytes_total", {"cluster": "cluster-a"}
    )
    return value or 0.0


@pytest.fixture(scope="module")
async def big_namespace(cluster_a: Cluster) -> dict[str, int]:
    """Namespace BIG_NS with CONFIGMAPS ConfigMaps ``cm-000``... of about 8 KB, one ConfigMap
    ``huge`` of 100 KB and SECRETS Secrets of 40 KB; returns the JSON size of the ConfigMap
    list as the API server sends it."""
    line = "v" * 99 + "\n"
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        with contextlib.suppress(ApiException):
            await core.create_namespace({"metadata": {"name": BIG_NS}})
        existing = {c.metadata.name for c in (await core.list_namespaced_config_map(BIG_NS)).items}
        for i in range(CONFIGMAPS):
            if f"cm-{i:03d}" not in existing:
                data = {"config.txt": line * CONFIGMAP_LINES}
                await core.create_namespaced_config_map(
                    BIG_NS, {"metadata": {"name": f"cm-{i:03d}"}, "data": data}
                )
        if "huge" not in existing:
            value = "h" * HUGE_CONFIGMAP_BYTES
            await core.create_namespaced_config_map(
                BIG_NS, {"metadata": {"name": "huge"}, "data": {"blob": value}}
            )
        existing = {s.metadata.name for s in (await core.list_namespaced_secret(BIG_NS)).items}
        for i in range(SECRETS):
            if f"secret-{i}" not in existing:
                blob = base64.b64encode(b"s" * 40 * 1024).decode()
                await core.create_namespaced_secret(
                    BIG_NS, {"metadata": {"name": f"secret-{i}"}, "data": {"blob": blob}}
                )
    status, listed = await asyncio.to_thread(
        cluster_a.admin_request, "GET", f"/api/v1/namespaces/{BIG_NS}/configmaps"
    )
    assert status == 200
    return {"list_bytes": len(listed.encode())}


# -- pods_exec ----------------------------------------------------------------------------------


async def test_exec_stops_reading_a_flood_of_output_at_the_bound(
    backend: RunningBackend, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """The attack: a command printing 50 MB (600 MB in the bench). Before the fix the backend
    read and held all of it; now it reads at most 4 x output_max_chars bytes, then closes the
    exec stream and answers with the beginning of the output and why it stopped.

    What happens to the command itself is up to the cluster: here (kwok) the rest of its output
    is drained and dropped upstream and the command runs to its end; it costs the backend
    nothing more."""
    command = ["sh", "-c", f"yes {'x' * 69} | head -c 50000000"]
    before = _upstream_bytes(backend)
    async with mcp_client(backend.url, tokens.admin) as client:
        result = await client.call_tool(
            "pods_exec", {"name": workloads["web_pods"][0], "namespace": NS, "command": command}
        )
    read = _upstream_bytes(backend) - before
    text = text_of(result)
    assert read <= BOUND + 1024 * 1024  # the output plus, at most, one more frame
    assert not result.is_error, text
    assert result.structured_content["truncated"] is True
    assert result.structured_content["exitCode"] is None
    assert BOUND <= result.structured_content["bytesRead"] <= BOUND + 1024 * 1024
    assert f"[output stopped: the command printed more than {BOUND} bytes" in text
    assert text.startswith("x" * 69 + "\n")  # the beginning of the output
    assert len(text) <= CAP + 1000


async def test_exec_output_under_the_bound_is_read_whole_and_tailed(
    backend: RunningBackend, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """Between the cap and the bound nothing changes: the whole output is read, its end shown,
    and the exit code is known."""
    command = ["sh", "-c", "seq 1 20000; exit 3"]  # 108 894 bytes
    async with mcp_client(backend.url, tokens.admin) as client:
        result = await client.call_tool(
            "pods_exec", {"name": workloads["web_pods"][0], "namespace": NS, "command": command}
        )
    text = text_of(result)
    assert result.is_error  # exit code 3
    assert result.structured_content["exitCode"] == 3
    assert "truncated" not in result.structured_content
    assert text.startswith("[output truncated: showing the last")
    assert "\n20000\n" in text
    assert text.endswith("[exit code 3]\n")


# -- lists -------------------------------------------------------------------------------------


async def test_a_huge_yaml_list_is_read_only_up_to_the_output_cap_and_pages_without_gaps(
    backend: RunningBackend, tokens: Tokens, big_namespace: dict[str, int]
) -> None:
    """The attack: ``output: yaml, limit: 100000`` over a big namespace. The limit is lowered
    to max_list_limit, the YAML stops at the cap, and the backend stops reading the answer
    there (a small part of it); the answer says how to page on, and doing so skips nothing."""
    args = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": BIG_NS, "output": "yaml"}
    before = _upstream_bytes(backend)
    async with mcp_client(backend.url, tokens.admin) as client:
        huge = await client.call_tool("resources_list", {**args, "limit": 100000})
        read = _upstream_bytes(backend) - before
        text = text_of(huge)
        shown = huge.structured_content["count"]
        assert read < big_namespace["list_bytes"] / 10
        assert not huge.is_error, text
        assert text.startswith("[limit 100000 is above this server's largest page")
        assert huge.structured_content["limit"] == 1000
        assert huge.structured_content["truncated"] is True
        assert "continue" not in huge.structured_content
        assert f"{shown} items shown: the YAML reached the 40000-character output cap" in text
        assert f"Call again with limit={shown}" in text
        assert 1 <= shown < 10
        items = yaml.safe_load(text.split("\n[", 1)[0].split("\n", 1)[1])
        assert [i["metadata"]["name"] for i in items] == [f"cm-{i:03d}" for i in range(shown)]
        # Paging as told: pages of `shown` items follow on with no gap and no repeat.
        first = await client.call_tool("resources_list", {**args, "limit": shown})
        assert first.structured_content["count"] == shown
        assert "truncated" not in first.structured_content
        token = first.structured_content["continue"]
        second = await client.call_tool(
            "resources_list", {**args, "limit": shown, "continue": token}
        )
    names = [i["metadata"]["name"] for i in yaml.safe_load(text_of(second).split("\n[", 1)[0])]
    assert names == [f"cm-{i:03d}" for i in range(shown, 2 * shown)]


async def test_an_object_alone_larger_than_the_cap_is_cut_with_a_hint(
    backend: RunningBackend, tokens: Tokens, big_namespace: dict[str, int]
) -> None:
    async with mcp_client(backend.url, tokens.admin) as client:
        result = await client.call_tool(
            "resources_list",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": BIG_NS,
                "output": "yaml",
                "fieldSelector": "metadata.name=huge",
            },
        )
    text = text_of(result)
    assert not result.is_error, text
    assert result.structured_content["truncated"] is True
    assert result.structured_content["count"] == 0
    assert "The first object alone is larger than the cap" in text
    assert len(text) < CAP + 1000


async def test_answers_past_max_response_bytes_are_refused_or_cut(
    backend_factory: Any, tokens: Tokens, big_namespace: dict[str, int]
) -> None:
    """A whole answer (one object) larger than max_response_bytes is refused with a clear
    error; a list read piece by piece stops there and shows what it read, redacted."""
    small = await backend_factory(max_response_bytes=64 * 1024)
    async with mcp_client(small.url, tokens.admin) as client:
        got = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "ConfigMap", "namespace": BIG_NS, "name": "huge"},
        )
        secrets = await client.call_tool(
            "resources_list",
            {"apiVersion": "v1", "kind": "Secret", "namespace": BIG_NS, "output": "yaml"},
        )
    assert got.is_error
    assert "with more than 65536 bytes, the most this server reads of one answer" in text_of(got)
    assert "setting max_response_bytes" in text_of(got)
    text = text_of(secrets)
    assert not secrets.is_error, text
    assert secrets.structured_content["truncated"] is True
    assert 1 <= secrets.structured_content["count"] < SECRETS
    assert "the API server's answer passed max_response_bytes" in text
    assert "blob: '***'" in text or 'blob: "***"' in text
    assert "c3Nz" not in text  # base64 of the secret bytes


# -- helm ----------------------------------------------------------------------------------------


async def test_helm_output_past_max_response_bytes_stops_helm(
    backend_factory: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    """helm's own output is bounded too: a chart whose render is larger than max_response_bytes
    stops helm at the dry run, before anything is installed."""
    chart = charts_dir / tmp_path.name / "wide"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML.replace("tiny", "wide"))
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cm}\n"
        'data: {blob: {{ repeat 100000 "w" | quote }}}\n'
    )
    small = await backend_factory(
        max_response_bytes=64 * 1024, helm_chart_sources=chart_sources(charts_dir)
    )
    async with mcp_client(small.url, tokens.admin) as client:
        result = await client.call_tool(
            "helm_install", {"chart": str(chart), "name": "hwide", "namespace": NS}
        )
    assert result.is_error
    assert "printed more than 65536 bytes, the most this server reads of one helm command" in (
        text_of(result)
    )
    async with cluster_a.admin_client() as api:
        with pytest.raises(ApiException) as missing:
            await k8s.CoreV1Api(api).read_namespaced_config_map("hwide-cm", NS)
    assert missing.value.status == 404
