"""tools/list filtered by the cluster's RBAC (``rbac_list``) vs the setting off, side by side.

Real components: the testbed's Keycloak (real tokens of the demo user ``mcp``), a real
kube-apiserver (cluster A) where ``mcp`` holds ClusterRole ``view`` in one namespace, and two
policy services started with their CLI, identical but for ``rbac_list.enabled`` (on: reviews
with the user's token exchanged at Keycloak for the server's audience). The signed-list cache is
off in both (``wristband.cache_ttl_s: 0``), so every tools/list evaluates the policy, filters
(on: with the user's review results from the warm RBAC cache) and signs: the difference is the
filter's own cost.

Requests alternate one by one between the two services (the order flips every round), so drift
of the shared machine hits both. Reported: p50/p99 of the ext_authz tools/list round trip per
service, the added p99 and p50 (on - off; also the median over the rounds of each round's p99
difference), the filter's in-process cost per list (warm cache), and how many reviews the warm
run made (0 expected: the cache answered). Goal (issue 18): added p99 <= 1 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.load import percentiles
from gateway_plugins.policy.config import RbacCluster, RbacListSettings, RbacTokenExchange
from gateway_plugins.policy.rbac_list import RbacListFilter, RbacMetrics, user_key
from tests.gateway_plugins.policy.running import CALLER_HEADERS, SERVER, policy_settings
from tests.testbed import keycloak as kc
from tests.testbed import paths, process
from tests.testbed.cluster import Cluster
from tests.testbed.control_plane.start import start_cluster
from tests.testbed.fixtures_kube import cluster_a_issuers
from tests.testbed.identity_plan import REALM_MCP, new_plan
from tests.testbed.pki import CertificateAuthority
from tests.testbed.rbac_grants import view_only_in

NAMESPACE = "rbac-list-bench"
ROUNDS = 10
CALLS = 500  # per service and round
FILTER_CALLS = 20_000


def _rbac(
    keycloak: kc.Keycloak, cluster: Cluster, work: Path, *, enabled: bool
) -> RbacListSettings:
    secret = work / "exchange.secret"
    secret.write_text(keycloak.gateway_client_secret)
    secret.chmod(0o600)
    exchange = RbacTokenExchange(
        url=keycloak.token_url(REALM_MCP),
        audience=SERVER,
        client_id=keycloak.gateway_client_id,
        client_secret_file=secret,
        ca_file=keycloak.ca_file,
    )
    entry = RbacCluster(
        server=SERVER,
        api_server=cluster.server,
        ca_file=cluster.ca_file,
        namespaces=[NAMESPACE],
        token_exchange=exchange,
    )
    # The warm cache must outlive the run: a TTL longer than the bench.
    return RbacListSettings(enabled=enabled, clusters=[entry], cache_ttl_s=3600, timeout_s=5)


def _start(
    keycloak: kc.Keycloak, cluster: Cluster, run_dir: Path, name: str, *, enabled: bool
) -> tuple[process.ManagedProcess, str]:
    work = run_dir / name
    work.mkdir(parents=True, exist_ok=True)
    settings = policy_settings(
        keycloak,
        work,
        rbac_list=_rbac(keycloak, cluster, work, enabled=enabled),
        wristband={"cache_ttl_s": 0},
    )
    data = settings.model_dump(mode="json")
    data["decision_log"] = None  # both alike; the decision log is measured elsewhere
    config = run_dir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = process.ManagedProcess(
        name,
        [sys.executable, "-m", "gateway_plugins.policy.cli", "serve", "--config", config,
         "--log-level", "warning"],
        run_dir / f"{name}.log",
        cwd=paths.REPO_ROOT,
    )  # fmt: skip
    proc.start()
    url = f"http://127.0.0.1:{settings.port}"
    proc.wait_until(lambda: process.http_ok(f"{url}/readyz"), timeout=60, what="ready (/readyz)")
    return proc, url


async def _view_only(cluster: Cluster) -> None:
    """``mcp`` may only view, in the bench's namespace."""
    async with cluster.admin_client() as api:
        await view_only_in(api, NAMESPACE, "mcp")


async def _reviews(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "policy_rbac_reviews_total"
    )


async def _side_by_side(token: str, urls: dict[str, str]) -> dict[str, Any]:
    headers = {**CALLER_HEADERS, "authorization": f"Bearer {token}",
               "x-mcp-method": "tools/list", "x-mcp-servername": "mcpBroker"}  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in urls}
    lists: dict[str, list[str]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as http:

        async def one(url: str) -> list[str]:
            async with http.post(f"{url}/check/mcp", headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert "x-authorized-tools" in resp.headers, body
                listed: list[str] = body["allowed_tools"][SERVER]
                return listed

        for name, url in urls.items():  # warm-up: the first list of "on" fills the RBAC cache
            for _ in range(50):
                lists[name] = await one(url)
        reviews_warm = await _reviews(http, urls["on"])
        round_p99: dict[str, list[float]] = {name: [] for name in urls}
        order = list(urls)
        for _ in range(ROUNDS):
            this_round: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(CALLS):  # one request each, in turn: drift hits both alike
                for name in order:
                    t = time.perf_counter()
                    await one(urls[name])
                    this_round[name].append(time.perf_counter() - t)
            order.reverse()  # neither service always goes first
            for name, values in this_round.items():
                samples[name] += values
                round_p99[name].append(percentiles(values)["p99_ms"])
        reviews_after = await _reviews(http, urls["on"])
    assert set(lists["on"]) < set(lists["off"]), "the filter removed nothing"
    on, off = percentiles(samples["on"]), percentiles(samples["off"])
    return {
        "off": off,
        "on_warm_cache": on,
        "added_p99_ms": round(on["p99_ms"] - off["p99_ms"], 3),
        "added_p50_ms": round(on["p50_ms"] - off["p50_ms"], 3),
        # the p99 difference of each round (500 requests per service), median over the rounds:
        # less sensitive to one burst of the shared machine than the difference of the pooled p99
        "added_p99_ms_median_of_rounds": round(
            statistics.median(
                a - b for a, b in zip(round_p99["on"], round_p99["off"], strict=True)
            ),
            3,
        ),
        "tools_listed": {"off": len(lists["off"]), "on": len(lists["on"])},
        "reviews_during_timed_run": reviews_after - reviews_warm,
        "reviews_total": reviews_after,
    }


async def _filter_cost(keycloak: kc.Keycloak, cluster: Cluster, run_dir: Path, token: str) -> Any:
    """The filter alone, in-process, warm cache: what the service adds per tools/list."""
    from prometheus_client import CollectorRegistry

    work = run_dir / "in-process"
    work.mkdir(parents=True, exist_ok=True)
    rbac = RbacListFilter(
        _rbac(keycloak, cluster, work, enabled=True), RbacMetrics.register(CollectorRegistry())
    )
    await rbac.start()
    try:
        claims = kc.decode_jwt(token)
        tools = json.loads((run_dir / "on" / "catalogue.json").read_text())
        allowed = {server: [t["name"] for t in entries] for server, entries in tools.items()}
        who = user_key(claims)
        first = await rbac.filter(allowed, token, who)  # the one review
        assert not first.degraded
        times = []
        for _ in range(FILTER_CALLS):
            t = time.perf_counter()
            await rbac.filter(allowed, token, who)
            times.append(time.perf_counter() - t)
        return percentiles(times)
    finally:
        await rbac.close()


async def run(soak: bool = False) -> dict[str, Any]:
    run_dir = paths.new_run_dir("bench-rbac-list")
    ca = CertificateAuthority(run_dir / "pki")
    plan = new_plan()
    keycloak = kc.Keycloak(run_dir=run_dir, plan=plan, tls=ca.issue("keycloak"), ca_file=ca.cert)
    cluster: Cluster | None = None
    services: list[process.ManagedProcess] = []
    try:
        print("[bench] rbac_list: starting Keycloak and cluster A", flush=True)
        keycloak.launch()
        cluster = await asyncio.to_thread(
            start_cluster, "cluster-a", ca, run_dir, cluster_a_issuers(plan, ca)
        )
        await asyncio.to_thread(keycloak.wait_ready)
        token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
        await cluster.wait_token_accepted(token, within=60)
        await _view_only(cluster)
        urls: dict[str, str] = {}
        for name, enabled in (("off", False), ("on", True)):
            proc, urls[name] = await asyncio.to_thread(
                _start, keycloak, cluster, run_dir, name, enabled=enabled
            )
            services.append(proc)
        load_before = os.getloadavg()
        print(f"[bench] rbac_list: tools/list side by side, load {load_before}", flush=True)
        side = await _side_by_side(token, urls)
        filter_alone = await _filter_cost(keycloak, cluster, run_dir, token)
    finally:
        for proc in services:
            proc.stop()
        if cluster is not None:
            cluster.stop()
        keycloak.stop()
    return {
        **side,
        "filter_in_process_warm_cache": filter_alone,
        "goals": {"added_p99_le_1ms": side["added_p99_ms"] <= 1.0},
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": os.getloadavg(),
        "run_dir": str(run_dir),
    }
