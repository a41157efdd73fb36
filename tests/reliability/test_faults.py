"""Faults of a cluster's API server, with the real kube-apiserver frozen and stopped mid-load: it
hangs (SIGSTOP: accepts TCP, never answers) or is down (process stopped); tool results name the
cluster, the other cluster keeps working, nothing waits past the configured timeout, and
everything recovers without a restart of the backend. (Keycloak and OPA outages:
``test_outage_recovery.py``; graceful shutdown: ``test_graceful_shutdown.py``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from mcp_backend.config import Settings
from tests.mcp_backend.conftest import (
    RunningBackend,
    cluster_entry,
    start_backend,
    stop_backend,
)
from tests.reliability.fault_injection import frozen
from tests.reliability.service_calls import timed_call
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.timeout(900)

TIMEOUT_S = 3.0  # the backend's request_timeout_s in these tests


@pytest.fixture(scope="module")
async def two_cluster_backend(
    cluster_a: Cluster, cluster_b: Cluster
) -> AsyncIterator[RunningBackend]:
    running = await start_backend(
        Settings.model_validate(
            {
                "clusters": [cluster_entry(cluster_a, default=True), cluster_entry(cluster_b)],
                "request_timeout_s": TIMEOUT_S,
                "connect_timeout_s": 2,
                "discovery_timeout_s": TIMEOUT_S,
            }
        )
    )
    yield running
    await stop_backend(running)


async def test_hung_api_server_is_named_bounded_and_isolated(
    two_cluster_backend: RunningBackend, cluster_b: Cluster, sa_tokens: dict[str, str]
) -> None:
    url = two_cluster_backend.url
    ok, text, _ = await timed_call(
        url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
    )
    assert not ok, text  # warm: discovery and connection pool of B
    with frozen(cluster_b):
        on_b, on_a = await asyncio.gather(
            timed_call(url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}),
            timed_call(url, sa_tokens["cluster-a"], "namespaces_list", {}),
        )
        # A second call on B while it still hangs: again bounded, not stuck behind the first.
        on_b_again = await timed_call(
            url, sa_tokens["cluster-b"], "pods_list", {"context": "cluster-b"}
        )
    is_error, text, elapsed = on_b
    assert is_error, text
    assert "'cluster-b'" in text, text
    assert cluster_b.server in text, text
    assert f"within {TIMEOUT_S:g}s" in text, text
    assert elapsed < TIMEOUT_S + 5, elapsed
    assert on_b_again[0], on_b_again
    assert "'cluster-b'" in on_b_again[1], on_b_again
    assert on_b_again[2] < TIMEOUT_S + 5, on_b_again
    a_error, a_text, a_elapsed = on_a
    assert not a_error, a_text
    assert "default" in a_text
    assert a_elapsed < TIMEOUT_S + 5
    # Resumed: B answers again, same backend process.
    deadline = time.monotonic() + 30
    while True:
        is_error, text, _ = await timed_call(
            url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
        )
        if not is_error or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not is_error, text


async def test_stopped_api_server_is_named_and_recovers_without_restart(
    two_cluster_backend: RunningBackend, cluster_b: Cluster, sa_tokens: dict[str, str]
) -> None:
    url = two_cluster_backend.url
    apiserver = cluster_b.processes["kube-apiserver"]
    await asyncio.to_thread(apiserver.stop)
    try:
        is_error, text, elapsed = await timed_call(
            url, sa_tokens["cluster-b"], "pods_list", {"context": "cluster-b"}
        )
        assert is_error, text
        assert "'cluster-b'" in text, text
        assert "unreachable" in text, text
        assert elapsed < TIMEOUT_S + 5
        a_error, a_text, _ = await timed_call(url, sa_tokens["cluster-a"], "namespaces_list", {})
        assert not a_error, a_text
    finally:
        await asyncio.to_thread(apiserver.start)
    deadline = time.monotonic() + 120
    while True:
        is_error, text, _ = await timed_call(
            url, sa_tokens["cluster-b"], "namespaces_list", {"context": "cluster-b"}
        )
        if not is_error or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert not is_error, f"cluster B did not come back through the same backend: {text}"
