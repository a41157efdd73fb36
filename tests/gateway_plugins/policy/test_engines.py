"""The engines behind the policy service: the OPA server mode decides like the embedded engine,
fails closed while OPA is down and recovers; only the arguments the policy reads reach OPA or
the decision cache key."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.service import service_of
from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from tests.gateway_plugins.policy.checks import (
    ALL_TOOLS,
    OTHER,
    call_body,
    check_headers,
    post_check,
)
from tests.gateway_plugins.policy.running import (
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.opa_server import OpaServer

pytestmark = pytest.mark.timeout(600)


# --- OPA server mode, outage and recovery


async def test_opa_mode_decides_like_embedded_then_fails_closed_and_recovers(
    http: aiohttp.ClientSession,
    keycloak: Any,
    policy_work: Path,
    policy_opa: OpaServer,
    mcp_token: str,
    viewer_token: str,
) -> None:
    settings = policy_settings(keycloak, policy_work / "opa", engine="opa", opa_url=policy_opa.url)
    async with running_policy(settings) as svc:
        call = check_headers(viewer_token, "tools/call", "pods_list")
        status, payload, _ = await post_check(http, svc, call, call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)
        status, payload, _ = await post_check(
            http,
            svc,
            check_headers(viewer_token, "tools/call", "pods_delete"),
            call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (403, False)
        _, _, headers = await post_check(http, svc, check_headers(mcp_token, "tools/list"))
        allowed = json.loads(verify(headers[LEGACY_HEADER], svc.public_key_pem)["allowed-tools"])
        assert allowed == {SERVER: sorted(ALL_TOOLS), OTHER: []}

        policy_opa.stop()
        status, payload, _ = await post_check(http, svc, call, call_body("pods_list", {}))
        assert (status, payload["allow"]) == (503, False)
        assert payload["reason"].startswith("policy engine unavailable, denying: OPA at")
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 503

        policy_opa.start()  # a fresh OPA without our policy: the service reloads it by itself
        status, payload, _ = await post_check(http, svc, call, call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 200


# --- what reaches the engine: only the arguments the policy reads


class _LoggingOpa(OpaServer):
    """OPA with its decision log on the console (its log file): every input it decided on."""

    def command(self) -> list[str]:
        return [*super().command(), "--set=decision_logs.console=true"]


_SECRET_YAML = """apiVersion: v1
kind: Secret
metadata: {name: db, namespace: default}
stringData: {password: %s}
"""


async def test_tool_arguments_beyond_the_policys_never_reach_opa(
    http: aiohttp.ClientSession,
    keycloak: Any,
    policy_work: Path,
    testbed_run_dir: Path,
    mcp_token: str,
    viewer_token: str,
) -> None:
    marker = f"pw-{uuid.uuid4().hex}"
    opa = _LoggingOpa(testbed_run_dir, load=[], name="opa-decision-log").start()
    settings = policy_settings(keycloak, policy_work / "opa-log", engine="opa", opa_url=opa.url)
    arguments = {
        "namespace": "default",
        "resource": _SECRET_YAML % marker,
        "access_token": viewer_token,  # the backend accepts a bearer token in arguments
    }
    try:
        async with running_policy(settings) as svc:
            tool = "resources_create_or_update"
            status, payload, _ = await post_check(
                http, svc, check_headers(mcp_token, "tools/call", tool), call_body(tool, arguments)
            )
            assert (status, payload["allow"]) == (200, True), payload
        log_path = testbed_run_dir / "opa-decision-log.log"
        for _ in range(50):
            entries = [
                json.loads(line)
                for line in log_path.read_text().splitlines()
                if line.startswith("{") and '"decision_id"' in line
            ]
            if any(e.get("input", {}).get("tool", {}).get("name") == tool for e in entries):
                break
            await asyncio.sleep(0.1)
        logged = [e for e in entries if e.get("input", {}).get("tool", {}).get("name") == tool]
        assert logged, "OPA logged no decision for the call"
        assert logged[0]["input"]["arguments"] == {"namespace": "default"}
        assert logged[0]["input"]["claims"]["iss"] == keycloak.issuer(REALM_MCP)
        text = log_path.read_text()
        assert marker not in text
        assert viewer_token.split(".")[1] not in text
    finally:
        opa.stop()


async def test_decision_cache_key_ignores_arguments_the_policy_does_not_read(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str, viewer_token: str
) -> None:
    engine = service_of(service.app).engine.current  # in force (LiveEngine wraps it)
    assert isinstance(engine, EmbeddedEngine)
    tool = "resources_create_or_update"
    headers = check_headers(mcp_token, "tools/call", tool)
    namespace = f"ns-{uuid.uuid4().hex[:8]}"  # an input no other test decided
    first = {"namespace": namespace, "resource": _SECRET_YAML % "one", "access_token": "a.b.c"}
    second = {
        "namespace": namespace,
        "resource": _SECRET_YAML % "two",
        "access_token": viewer_token,
    }
    hits = engine.cache_hits
    status, _, _ = await post_check(http, service, headers, call_body(tool, first))
    assert status == 200
    assert engine.cache_hits == hits
    status, _, _ = await post_check(http, service, headers, call_body(tool, second))
    assert status == 200
    assert engine.cache_hits == hits + 1  # same projected input: one cache entry, no token in it
