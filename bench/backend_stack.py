"""The backend benchmarks' stack: a bench cluster holding 200 pods with a "view" token,
``mcp-backend serve`` processes on it (pool and per-user limit sized for the 16 clients), and
what a running backend reports (RSS from /proc, its Prometheus metrics). Used by
``scenario_backend`` and ``scenario_tracing``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s

from tests.testbed import paths, process
from tests.testbed.cluster import Cluster
from tests.testbed.ports import free_port

PODS = 200
CONCURRENCY = 16
POOL_SIZE = 16
NS = "bench"


async def prepare_cluster(cluster: Cluster) -> str:
    """Namespace with a 200-replica Deployment (pods stay Pending: no nodes), and a view token."""
    async with cluster.admin_client() as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        await core.create_namespace({"metadata": {"name": NS}})  # type: ignore[arg-type]
        await apps.create_namespaced_deployment(
            NS,
            {  # type: ignore[arg-type]
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": PODS,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "main", "image": "pause:3.10"}]},
                    },
                },
            },
        )
        deadline = time.monotonic() + 180
        while True:
            pods = await core.list_namespaced_pod(NS, label_selector="app=web")
            if len(pods.items) >= PODS:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(pods.items)} of {PODS} pods created in 180 s")
            await asyncio.sleep(0.5)
    return await cluster.service_account_token(
        name="bench-viewer", cluster_role="view", cluster_wide=True
    )


def start_backend(
    cluster: Cluster, run_dir: Path, name: str, **extra: Any
) -> tuple[process.ManagedProcess, str]:
    """A backend tuned for the throughput phases: the connection pool sized, and one token may
    drive all CONCURRENCY clients (the per-user limit is measured by scenario_exhaustion)."""
    return serve_backend(
        cluster,
        run_dir,
        name,
        pool_size=POOL_SIZE,
        max_concurrent_calls_per_user=CONCURRENCY,
        **extra,
    )


def serve_backend(
    cluster: Cluster, run_dir: Path, name: str, **settings: Any
) -> tuple[process.ManagedProcess, str]:
    """``mcp-backend serve`` on a free loopback port for ``cluster`` (its default), with
    ``settings`` over the defaults; (process, base URL) once it is ready."""
    port = free_port()
    config = run_dir / f"{name}.yaml"
    data = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "WARNING",
        "clusters": [
            {
                "name": cluster.name,
                "server": cluster.server,
                "ca_file": str(cluster.ca_file),
                "default": True,
            }
        ],
        **settings,
    }
    config.write_text(yaml.safe_dump(data))
    proc = process.ManagedProcess(
        name,
        [sys.executable, "-m", "mcp_backend", "serve", "--config", str(config)],
        run_dir / f"{name}.log",
        cwd=paths.REPO_ROOT,
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: process.http_ok(f"{base}/readyz"), timeout=30, what="ready")
    return proc, base


def rss_kib(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "peak_kib": int(fields["VmHWM"].split()[0])}


async def metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def answered_by(base: str) -> dict[str, int]:
    """POSTs to /mcp per answering path (``kmg_backend_mcp_requests_total{path}``)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    prefix = 'kmg_backend_mcp_requests_total{path="'
    return {
        line[len(prefix) :].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    }
