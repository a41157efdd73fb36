"""Policy decisions: embedded engine vs OPA server vs querying OPA directly, and the signed header.

One run, side by side, with real components (an OPA server built by the testbed, the testbed's
Keycloak for real tokens, the policy service as its own process started with its CLI):

1. ``engine_*``: one decision at a time through the engine interface, same inputs for all three:
   ``embedded`` (rego-cpp in-process), ``opa_engine`` (our OPA-server engine: opa-python-client
   over HTTP) and ``opa_direct`` (a plain aiohttp POST to OPA's data API: the floor). Rounds
   alternate so drift hits all three. Reported: p50 / p99 and the OPA-mode median overhead.
2. ``service_paced``: ext_authz ``/check`` (tools/call, real Keycloak token verified against the
   realm's JWKS, embedded engine) at a fixed 500 requests/s; latency from the scheduled time.
3. ``signed_header``: the tools/list header for a catalogue of 500 tools on 5 servers, cold
   (policy evaluation + ES256 signing) in both engines, signing alone, and the service's cached
   path (same claims within the reuse window).

Goals (issue 6): embedded p99 <= 1 ms; service p99 <= 3 ms at 500 req/s; OPA-mode median
overhead over direct OPA <= 1 ms; signed header for 500 tools <= 5 ms. The load generator
shares the 2-core machine with the service, OPA and Keycloak; its own cost is in the numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.load import paced_load, percentiles
from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.input import call_input, list_input, load_catalogue
from gateway_plugins.policy.opa_engine import OpaOptions, OpaServerEngine
from gateway_plugins.policy.policy_source import PolicySource, load_policy_source
from gateway_plugins.policy.wristband import WristbandSigner, generate_signing_key
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    CHANGING_TOOLS,
    POLICIES,
    READ_ONLY_TOOLS,
    SERVER,
    policy_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed import paths, process
from tests.testbed.identity_plan import new_plan
from tests.testbed.opa_server import OpaServer
from tests.testbed.pki import CertificateAuthority

ENGINE_ROUNDS = 4
ENGINE_CALLS = 750  # per engine and round
PACED_RATE = 500
PACED_SECONDS = 10
HEADER_SERVERS = 5
HEADER_TOOLS = 100  # per server: 500 in all
HEADER_CALLS = 40


def _claims(roles: list[str], groups: list[str] | None = None) -> dict[str, Any]:
    return {
        "sub": "b3c1",
        "preferred_username": "mcp",
        "resource_access": {SERVER: {"roles": roles}},
        "groups": groups or ["/mcp-users"],
    }


def _decision_inputs() -> list[dict[str, Any]]:
    """A realistic mix: allowed, denied, read-only grant, namespace rule, deny list (group)."""
    ro = {"readOnly": True, "destructive": False}
    rw = {"readOnly": False, "destructive": True}
    user = _claims(["pods_list", "pods_get", "pods_exec", "events_list"])
    return [
        call_input(method="tools/call", server=SERVER, tool="pods_list", annotations=ro,
                   claims=user, arguments={"namespace": "default"}),
        call_input(method="tools/call", server=SERVER, tool="pods_delete", annotations=rw,
                   claims=user, arguments={"name": "p"}),
        call_input(method="tools/call", server=SERVER, tool="helm_list", annotations=ro,
                   claims=_claims(["read-only"]), arguments={}),
        call_input(method="tools/call", server=SERVER, tool="pods_exec", annotations=rw,
                   claims=user, arguments={"namespace": "kube-system", "name": "p"}),
        call_input(method="tools/call", server=SERVER, tool="pods_get", annotations=ro,
                   claims=_claims(["pods_get"], ["/mcp-suspended"]), arguments={}),
    ]  # fmt: skip


async def _engines(opa: OpaServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    source = load_policy_source(POLICIES)
    embedded = EmbeddedEngine(source, cache_size=0)  # the engine itself, every call evaluated
    await embedded.start()
    cached = EmbeddedEngine(source)  # as the service runs it: repeated inputs hit the cache
    server = OpaServerEngine(source, OpaOptions(url=opa.url, timeout_s=5.0))
    await server.start()
    inputs = _decision_inputs()
    url = f"{opa.url}/v1/data/mcp/authz/decision"

    async def direct(doc: dict[str, Any]) -> Any:
        async with http.post(url, json={"input": doc}) as resp:
            return (await resp.json())["result"]

    calls: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        "embedded": embedded.evaluate,
        "embedded_with_cache": cached.evaluate,
        "opa_engine": server.evaluate,
        "opa_direct": direct,
    }
    # Same answers from all three before timing anything.
    for doc in inputs:
        a, b, c = await embedded.evaluate(doc), await server.evaluate(doc), await direct(doc)
        assert a == b, f"engines disagree on {doc['tool']}"
        assert a.as_json() == c, f"OPA's own answer differs on {doc['tool']}"
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        for i in range(100):
            await call(inputs[i % len(inputs)])
    for _ in range(ENGINE_ROUNDS):
        for name, call in calls.items():
            for i in range(ENGINE_CALLS):
                doc = inputs[i % len(inputs)]
                t = time.perf_counter()
                await call(doc)
                samples[name].append(time.perf_counter() - t)
    # CPU time per decision: independent of how busy the shared machine is.
    cpu_started = time.process_time()
    for i in range(2000):
        embedded.evaluate_sync(inputs[i % len(inputs)])
    cpu_per_decision = (time.process_time() - cpu_started) / 2000
    await embedded.close()
    await cached.close()
    await server.close()
    result: dict[str, Any] = {name: percentiles(values) for name, values in samples.items()}
    result["embedded_cpu_ms_per_decision"] = round(cpu_per_decision * 1000, 3)
    overhead = statistics.median(samples["opa_engine"]) - statistics.median(samples["opa_direct"])
    result["opa_engine_median_overhead_ms"] = round(overhead * 1000, 3)
    return result


def _header_catalogue_doc() -> dict[str, Any]:
    """5 servers x 100 tools (MCP form); the first is the testbed's server with its real tools."""
    doc: dict[str, Any] = {
        f"team-{s}/mcp": [
            {"name": f"tool_{t:03d}", "annotations": {"readOnlyHint": t % 2 == 0}}
            for t in range(HEADER_TOOLS)
        ]
        for s in range(1, HEADER_SERVERS)
    }
    real = [{"name": n, "annotations": {"readOnlyHint": True}} for n in READ_ONLY_TOOLS]
    real += [{"name": n, "annotations": {"readOnlyHint": False}} for n in CHANGING_TOOLS]
    filler = [{"name": f"tool_{t:03d}", "annotations": {"readOnlyHint": t % 2 == 0}}
              for t in range(HEADER_TOOLS - len(real))]  # fmt: skip
    doc[SERVER] = real + filler
    return doc


def _header_catalogue() -> dict[str, Any]:
    return load_catalogue(_header_catalogue_doc())


def _header_claims() -> dict[str, Any]:
    roles = [f"tool_{t:03d}" for t in range(0, HEADER_TOOLS, 3)] + ["read-only"]
    access = {f"team-{s}/mcp": {"roles": roles} for s in range(1, HEADER_SERVERS)}
    access[SERVER] = {"roles": [*CHANGING_TOOLS[:3], *roles]}
    return {"sub": "b3c1", "preferred_username": "mcp", "resource_access": access, "groups": []}


async def _signed_header(opa: OpaServer) -> dict[str, Any]:
    catalogue = _header_catalogue()
    base = load_policy_source(POLICIES)
    source = PolicySource(base.modules, base.config, catalogue)
    signer = WristbandSigner(generate_signing_key())
    doc = list_input(_header_claims(), None)  # the catalogue is data, loaded at start
    embedded = EmbeddedEngine(source)
    server = OpaServerEngine(source, OpaOptions(url=opa.url, timeout_s=10.0))
    await server.start()
    first = await embedded.allowed_tools(doc)
    assert first == await server.allowed_tools(doc), "engines disagree on the tool list"
    listed = sum(len(v) for v in first.values())
    out: dict[str, Any] = {"servers": HEADER_SERVERS, "tools": HEADER_SERVERS * HEADER_TOOLS,
                           "allowed_tools": listed}  # fmt: skip
    for name, engine in (("embedded", embedded), ("opa", server)):
        times = []
        for _ in range(HEADER_CALLS):
            t = time.perf_counter()
            signer.sign(await engine.allowed_tools(doc), subject="b3c1")
            times.append(time.perf_counter() - t)
        out[f"cold_{name}"] = percentiles(times)
    cpu_started = time.process_time()
    for _ in range(HEADER_CALLS):
        signer.sign(embedded.allowed_tools_sync(doc), subject="b3c1")
    out["cold_embedded_cpu_ms"] = round(
        (time.process_time() - cpu_started) / HEADER_CALLS * 1000, 3
    )
    sign_only = []
    for _ in range(200):
        t = time.perf_counter()
        signed = signer.sign(first, subject="b3c1")
        sign_only.append(time.perf_counter() - t)
    out["sign_only"] = percentiles(sign_only)
    out["header_bytes"] = len(next(iter(signed.headers.values())))
    await embedded.close()
    await server.close()
    return out


def _start_service(keycloak: kc.Keycloak, run_dir: Path) -> tuple[process.ManagedProcess, str]:
    settings = policy_settings(keycloak, run_dir / "policy")
    assert settings.catalogue_file is not None
    settings.catalogue_file.write_text(json.dumps(_header_catalogue_doc()))  # 500 tools
    data = settings.model_dump(mode="json")
    data["decision_log"] = str(run_dir / "policy" / "decisions.jsonl")
    config = run_dir / "policy.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = process.ManagedProcess(
        "policy",
        [sys.executable, "-m", "gateway_plugins.policy.cli", "serve", "--config", config,
         "--log-level", "warning"],
        run_dir / "policy.log",
        cwd=paths.REPO_ROOT,
    )  # fmt: skip
    proc.start()
    url = f"http://127.0.0.1:{settings.port}"
    proc.wait_until(lambda: process.http_ok(f"{url}/readyz"), timeout=60, what="ready (/readyz)")
    return proc, url


async def _service(keycloak: kc.Keycloak, url: str) -> dict[str, Any]:
    token = await asyncio.to_thread(keycloak.user_token, "mcp", "mcp")
    headers = {
        "authorization": f"Bearer {token}",
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_list",
        **CALLER_HEADERS,  # the service answers only the gateway (caller_auth)
    }
    params = {"name": "pods_list", "arguments": {"namespace": "default"}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    list_headers = {"authorization": f"Bearer {token}", "x-mcp-method": "tools/list",
                    "x-mcp-servername": "mcpBroker", **CALLER_HEADERS}  # fmt: skip
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def check() -> bool:
            async with http.post(f"{url}/check/mcp", headers=headers, data=body) as resp:
                await resp.read()
                return resp.status == 200

        async def check_list() -> bool:
            async with http.post(f"{url}/check/mcp", headers=list_headers) as resp:
                await resp.read()
                return resp.status == 200 and "x-authorized-tools" in resp.headers

        assert await check(), "warm-up check failed"
        assert await check_list(), "warm-up tools/list check failed"
        await paced_load(check, 200, 2)  # warm-up
        paced = await paced_load(check, PACED_RATE, PACED_SECONDS)
        cached = []
        for _ in range(200):
            t = time.perf_counter()
            assert await check_list()
            cached.append(time.perf_counter() - t)
    return {
        "service_paced_tools_call": paced,
        "service_tools_list_500_tools_cached_roundtrip": percentiles(cached),
    }


async def run(soak: bool = False) -> dict[str, Any]:
    run_dir = paths.new_run_dir("bench-policy")
    opa = OpaServer(run_dir, load=[], name="opa-bench").start()
    keycloak: kc.Keycloak | None = None
    service: process.ManagedProcess | None = None
    try:
        async with aiohttp.ClientSession() as http:
            print("[bench] policy: engines (embedded / OPA engine / OPA direct)", flush=True)
            engines = await _engines(opa, http)
        print("[bench] policy: signed header, 500 tools on 5 servers", flush=True)
        header = await _signed_header(opa)
        ca = CertificateAuthority(run_dir / "pki")
        keycloak = kc.Keycloak(run_dir=run_dir, plan=new_plan(), tls=ca.issue("keycloak"),
                               ca_file=ca.cert)  # fmt: skip
        print("[bench] policy: starting Keycloak (about a minute)", flush=True)
        await asyncio.to_thread(keycloak.start)
        service, url = await asyncio.to_thread(_start_service, keycloak, run_dir)
        print(f"[bench] policy: service at {PACED_RATE} req/s for {PACED_SECONDS}s", flush=True)
        svc = await _service(keycloak, url)
    finally:
        if service is not None:
            service.stop()
        if keycloak is not None:
            keycloak.stop()
        opa.stop()
    load = os.getloadavg()
    goals = {
        "embedded_p99_le_1ms": engines["embedded"]["p99_ms"] <= 1.0,
        "service_p99_le_3ms_at_500rps": svc["service_paced_tools_call"]["p99_ms"] <= 3.0,
        "opa_mode_median_overhead_le_1ms": engines["opa_engine_median_overhead_ms"] <= 1.0,
        "signed_header_500_tools_le_5ms_cold_embedded": header["cold_embedded"]["p50_ms"] <= 5.0,
        "signed_header_500_tools_le_5ms_cold_opa": header["cold_opa"]["p50_ms"] <= 5.0,
        "signed_header_500_tools_le_5ms_cached_roundtrip": (
            svc["service_tools_list_500_tools_cached_roundtrip"]["p50_ms"] <= 5.0
        ),
    }
    return {"engines": engines, "signed_header": header, **svc, "goals": goals,
            "load_average_1_5_15": load, "run_dir": str(run_dir)}  # fmt: skip
