"""The combined ext_authz check (``/ext-authz/combined``): exchange, then the policy decision, in
one round trip, for Istio gateways with a single CUSTOM provider (issue 7).

Real components only: the testbed's Keycloak issues and exchanges the tokens, the real policy
service (``tests/gateway_plugins/policy/running.py``, embedded engine, the repo's policies) makes
the decisions. Stopping the policy service and starting it again on the same port is the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from gateway_plugins.token_exchange.config import ExtAuthzConfig, Settings
from kmg_common.tracing import TracingSettings
from tests.gateway_plugins.policy.running import (
    CHANGING_TOOLS,
    READ_ONLY_TOOLS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADER,
    CALLER_HEADERS,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.fixtures_identity import SessionKeycloak
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.jaeger import Jaeger
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(600)

COMBINED = "/ext-authz/combined"


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
async def mcp_token(keycloak: SessionKeycloak) -> str:
    token: str = await keycloak.auser_token("mcp", "mcp")
    return token


@pytest.fixture(scope="module")
async def viewer_token(keycloak: SessionKeycloak) -> str:
    token: str = await keycloak.auser_token("viewer", "viewer")
    return token


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("combined")


@pytest.fixture(scope="module")
def policy_config(keycloak: SessionKeycloak, work: Path) -> PolicySettings:
    """One policy deployment (fixed port and signing key), so a restart is the same service."""
    return policy_settings(keycloak, work / "policy")


@pytest.fixture(scope="module")
async def token_exchange(
    keycloak: SessionKeycloak, work: Path, policy_config: PolicySettings
) -> AsyncIterator[RunningService]:
    base = service_settings(keycloak, work / "te-secrets")
    url = f"http://127.0.0.1:{policy_config.port}/check"
    async with running_service(_with_policy_url(base, url, policy_timeout_s=2.0)) as running:
        yield running


def _with_policy_url(settings: Settings, url: str, **extra: Any) -> Settings:
    """``settings`` whose combined check asks the policy service at ``url``."""
    ext_authz = settings.ext_authz.model_copy(update={"policy_url": url, **extra})
    return settings.model_copy(update={"ext_authz": ext_authz})


@pytest.fixture
async def policy(policy_config: PolicySettings) -> AsyncIterator[RunningPolicy]:
    async with running_policy(policy_config) as running:
        yield running


def _headers(
    token: str | None, method: str, *, server: str = SERVER, tool: str | None = None
) -> dict[str, str]:
    headers = {
        "x-mcp-method": method,
        "x-mcp-servername": server,
        "host": "gw.example",
        **CALLER_HEADERS,
    }
    if tool is not None:
        headers["x-mcp-toolname"] = tool
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def _combined(
    http: aiohttp.ClientSession, te: RunningService, headers: dict[str, str], body: bytes = b""
) -> tuple[int, Any, dict[str, Any]]:
    async with http.post(f"{te.url}{COMBINED}/mcp", headers=headers, data=body) as resp:
        assert resp.content_type == "application/json"
        payload = await resp.json()
        assert isinstance(payload["allow"], bool), payload
        return resp.status, resp.headers, payload


def _bearer(headers: Any) -> str:
    scheme, _, token = str(headers["authorization"]).partition(" ")
    assert scheme == "Bearer"
    assert token
    return token


# --- allowed: the exchanged token goes upstream --------------------------------------------------


async def test_mcp_user_tool_call_is_allowed_with_the_exchanged_token(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    mcp_token: str,
) -> None:
    before = token_exchange.runtime.metrics.policy_call_count("allow")
    status, headers, payload = await _combined(
        http, token_exchange, _headers(mcp_token, "tools/call", tool="pods_list")
    )
    assert status == 200, payload
    assert payload["allow"] is True
    assert payload["exchanged"] is True
    assert payload["reason"]  # the policy's reason travels along
    exchanged = _bearer(headers)
    assert exchanged != mcp_token
    claims = kc.decode_jwt(exchanged)
    assert claims["aud"] in (BACKEND_AUDIENCE, [BACKEND_AUDIENCE])  # narrowed to the one backend
    assert claims["sub"] == kc.decode_jwt(mcp_token)["sub"]
    assert LEGACY_HEADER not in headers  # a tools/call carries no tool list
    assert token_exchange.runtime.metrics.policy_call_count("allow") == before + 1
    # The policy decided on the exchanged token (its decision log names the same user and tool).
    last = json.loads(policy.decision_log.read_text().strip().splitlines()[-1])
    assert (last["tool"], last["decision"], last["sub"]) == ("pods_list", "allow", claims["sub"])


async def test_tools_list_carries_the_signed_tool_list(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    mcp_token: str,
) -> None:
    # The broker's own request: the caller's token is validated and passed on unchanged.
    status, headers, payload = await _combined(
        http, token_exchange, _headers(mcp_token, "tools/list", server="mcpBroker")
    )
    assert status == 200, payload
    assert payload == {"allow": True, "exchanged": False, "reason": payload["reason"]}
    assert "authorization" not in headers  # Envoy keeps the caller's own header
    allowed = json.loads(verify(headers[LEGACY_HEADER], policy.public_key_pem)["allowed-tools"])
    assert set(allowed[SERVER]) == set(READ_ONLY_TOOLS + CHANGING_TOOLS)
    # Aimed at the backend: exchanged, and the list is signed for the exchanged token's user.
    status, headers, payload = await _combined(
        http, token_exchange, _headers(mcp_token, "tools/list")
    )
    assert status == 200, payload
    assert payload["exchanged"] is True
    assert kc.decode_jwt(_bearer(headers))["aud"] in (BACKEND_AUDIENCE, [BACKEND_AUDIENCE])
    signed = verify(headers[LEGACY_HEADER], policy.public_key_pem)
    assert json.loads(signed["allowed-tools"])[SERVER] == allowed[SERVER]


# --- denied ------------------------------------------------------------------------------------


async def test_viewer_on_a_destructive_tool_gets_the_policys_403(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    viewer_token: str,
) -> None:
    headers = _headers(viewer_token, "tools/call", tool="pods_delete")
    status, answer_headers, payload = await _combined(http, token_exchange, headers)
    assert status == 403, payload
    assert payload["allow"] is False
    assert payload["error"] == "policy_denied"
    assert "authorization" not in answer_headers  # nothing for upstream on a deny
    # The reason is the policy service's own, word for word.
    exchanged = await token_exchange.runtime.require().token_for(viewer_token, SERVER)
    direct = _headers(exchanged, "tools/call", tool="pods_delete")
    async with http.post(f"{policy.url}/check/mcp", headers=direct) as resp:
        assert resp.status == 403
        assert payload["reason"] == (await resp.json())["reason"]
    assert "pods_delete" in payload["reason"]
    # The same user may use a read-only tool: the 403 was the policy's decision, not the exchange.
    ok = _headers(viewer_token, "tools/call", tool="pods_list")
    status, _, payload = await _combined(http, token_exchange, ok)
    assert status == 200, payload


async def test_no_token_is_401_and_the_policy_is_not_asked(
    http: aiohttp.ClientSession, token_exchange: RunningService, policy: RunningPolicy
) -> None:
    before = token_exchange.runtime.metrics.policy_call_count()
    status, headers, payload = await _combined(
        http, token_exchange, _headers(None, "tools/call", tool="pods_list")
    )
    assert status == 401
    assert payload["allow"] is False
    assert payload["reason"] == "no bearer token"
    assert headers["WWW-Authenticate"].startswith("Bearer resource_metadata=")
    status, _, payload = await _combined(
        http, token_exchange, _headers("not-a-jwt", "tools/call", tool="pods_list")
    )
    assert (status, payload["error"]) == (401, "unauthenticated")
    assert token_exchange.runtime.metrics.policy_call_count() == before


async def test_exchange_refusals_answer_as_the_plain_check_does(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    mcp_token: str,
) -> None:
    for path in ("/check/mcp", f"{COMBINED}/mcp"):
        headers = _headers(mcp_token, "tools/call", server="no-such-target", tool="pods_list")
        async with http.post(f"{token_exchange.url}{path}", headers=headers) as resp:
            assert resp.status == 403, path
            assert (await resp.json())["error"] == "unknown_target", path


# --- the policy service cannot answer: deny (503), then recover ----------------------------------


async def test_policy_service_down_is_503_then_recovers(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy_config: PolicySettings,
    mcp_token: str,
) -> None:
    headers = _headers(mcp_token, "tools/call", tool="pods_list")
    async with running_policy(policy_config):
        status, _, payload = await _combined(http, token_exchange, headers)
        assert status == 200, payload
    # stopped: nothing listens on its port any more
    unreachable = token_exchange.runtime.metrics.policy_call_count("unreachable")
    status, answer_headers, payload = await _combined(http, token_exchange, headers)
    assert status == 503, payload
    assert payload["allow"] is False
    assert payload["error"] == "policy_unreachable"
    assert "fail closed" in payload["reason"]
    assert "authorization" not in answer_headers
    assert mcp_token not in json.dumps(payload)
    assert token_exchange.runtime.metrics.policy_call_count("unreachable") == unreachable + 1
    async with running_policy(policy_config):  # restarted on the same port
        status, answer_headers, payload = await _combined(http, token_exchange, headers)
        assert status == 200, payload
        assert _bearer(answer_headers) != mcp_token


async def test_policy_engine_down_is_503(
    http: aiohttp.ClientSession,
    keycloak: SessionKeycloak,
    work: Path,
    mcp_token: str,
) -> None:
    """The policy service answers 503 itself (its OPA is unreachable): still a deny."""
    config = policy_settings(
        keycloak, work / "policy-opa", engine="opa", opa_url=f"http://127.0.0.1:{free_port()}"
    )
    settings = _with_policy_url(
        service_settings(keycloak, work / "te-secrets"), f"http://127.0.0.1:{config.port}/check"
    )
    async with running_policy(config), running_service(settings) as te:
        status, _, payload = await _combined(
            http, te, _headers(mcp_token, "tools/call", tool="pods_list")
        )
    assert status == 503, payload
    assert payload["allow"] is False
    assert payload["error"] == "policy_error"
    assert "HTTP 503" in payload["reason"]
    assert "OPA" in payload["reason"]


async def test_policy_service_too_slow_is_503(
    http: aiohttp.ClientSession, keycloak: SessionKeycloak, work: Path, mcp_token: str
) -> None:
    # No real policy service hangs on demand: a TCP listener that accepts and never answers
    # stands in for one stuck mid-request (the only fault here not produced by a real component).
    stuck: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stuck.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = _with_policy_url(
        service_settings(keycloak, work / "te-secrets"),
        f"http://127.0.0.1:{port}/check",
        policy_timeout_s=0.5,
    )
    try:
        async with running_service(settings) as te:
            status, _, payload = await _combined(
                http, te, _headers(mcp_token, "tools/call", tool="pods_list")
            )
            assert te.runtime.metrics.policy_call_count("timeout") == 1
    finally:
        for writer in stuck:
            writer.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
    assert status == 503, payload
    assert (payload["allow"], payload["error"]) == (False, "policy_timeout")
    assert "0.5s" in payload["reason"]


# --- who may ask (issue 14 item 1) ---------------------------------------------------------------


async def test_the_combined_check_answers_only_the_gateway(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    mcp_token: str,
) -> None:
    """A pod around the gateway gets neither an exchanged token nor a decision."""
    metrics = token_exchange.runtime.metrics
    sts, asked = metrics.sts_call_count(), metrics.policy_call_count()
    for credential in ({}, {CALLER_HEADER: "not-the-gateways-secret-test-only"}):
        headers = {
            k: v for k, v in _headers(mcp_token, "tools/call", tool="pods_list").items()
            if k != CALLER_HEADER
        }  # fmt: skip
        status, answer_headers, payload = await _combined(
            http, token_exchange, headers | credential
        )
        assert (status, payload["allow"]) == (403, False), payload
        assert payload["error"] == "caller_unauthenticated"
        assert "authorization" not in answer_headers
        assert LEGACY_HEADER not in answer_headers
    assert (metrics.sts_call_count(), metrics.policy_call_count()) == (sts, asked)


async def test_a_policy_refusing_this_services_credential_is_a_503_not_the_users_denial(
    http: aiohttp.ClientSession,
    keycloak: SessionKeycloak,
    work: Path,
    policy_config: PolicySettings,
    mcp_token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The combined check presents a credential the policy service does not take (a rotated
    secret, ext_authz.policy_caller_* pointing at the wrong one): that is a broken deployment,
    not a decision about the user. Fail closed with 503 and say so to the operator."""
    monkeypatch.setenv("KMG_TEST_STALE_POLICY_SECRET", "stale-policy-secret-test-only")
    base = service_settings(keycloak, work / "te-secrets")
    settings = _with_policy_url(
        base,
        f"http://127.0.0.1:{policy_config.port}/check",
        policy_caller_secret_env="KMG_TEST_STALE_POLICY_SECRET",
    )
    headers = _headers(mcp_token, "tools/call", tool="pods_list")
    with caplog.at_level(logging.ERROR, logger="gateway_plugins.token_exchange.policy_client"):
        async with running_policy(policy_config), running_service(settings) as te:
            status, answer_headers, payload = await _combined(http, te, headers)
            assert te.runtime.metrics.policy_call_count("caller_refused") == 1
    assert status == 503, payload
    assert (payload["allow"], payload["error"]) == (False, "policy_caller_refused")
    assert "ext_authz.policy_caller_secret" in payload["reason"]
    assert "fail closed" in payload["reason"]
    assert "authorization" not in answer_headers
    assert "refused this service's caller credential" in caplog.text
    assert "stale-policy-secret-test-only" not in caplog.text + json.dumps(payload)


# --- configuration -------------------------------------------------------------------------------


async def test_without_policy_url_the_combined_check_denies(
    http: aiohttp.ClientSession, keycloak: SessionKeycloak, work: Path, mcp_token: str
) -> None:
    settings = service_settings(keycloak, work / "te-secrets")
    assert settings.ext_authz.policy_url is None
    async with running_service(settings) as te:
        status, _, payload = await _combined(
            http, te, _headers(mcp_token, "tools/call", tool="pods_list")
        )
        assert status == 503
        assert payload["allow"] is False
        assert payload["error"] == "not_configured"
        assert "combined check needs ext_authz.policy_url" in payload["reason"]
        # the plain check is unaffected
        headers = _headers(mcp_token, "tools/call", tool="pods_list")
        async with http.post(f"{te.url}/check/mcp", headers=headers) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://policy.kmg-system.svc:8080/v1/decide", "ext_authz check endpoint"),
        ("http://policy.kmg-system.svc:8080/v1/filter/", "ext_authz check endpoint"),
        ("policy:8080/check", "not an http(s) URL"),
        ("http://policy:8080/check?x=1", "query or fragment"),
    ],
)
def test_policy_url_must_be_the_check_endpoint(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExtAuthzConfig(policy_url=url)
    assert message in str(info.value)


def test_policy_url_is_normalised() -> None:
    config = ExtAuthzConfig(policy_url=" http://policy:8080/check/ ")
    assert config.policy_url == "http://policy:8080/check"
    assert ExtAuthzConfig().policy_url is None
    assert ExtAuthzConfig().policy_upstream_headers == ["x-authorized-tools", "x-mcp-authorized"]


# --- tracing (issue 16): the combined check is one trace: exchange, Keycloak, policy ----------


async def test_a_traced_combined_check_is_one_trace_through_keycloak_and_the_policy(
    http: aiohttp.ClientSession,
    keycloak: SessionKeycloak,
    work: Path,
    trace_collector: Jaeger,
) -> None:
    """Both services trace to the testbed's Jaeger: the combined check continues the gateway's
    ``traceparent``, its Keycloak exchange and its policy call are its children, and the policy
    service's span is the child of that call (its decision log names the trace)."""
    names = {"te": "combined-token-exchange", "policy": "combined-policy"}

    def traced(service: str) -> TracingSettings:
        return TracingSettings(endpoint=trace_collector.otlp_http_traces_url, service_name=service)

    policy_config = policy_settings(keycloak, work / "traced-policy")
    policy_config = policy_config.model_copy(update={"tracing": traced(names["policy"])})
    base = service_settings(keycloak, work / "traced-te-secrets")
    base = _with_policy_url(base, f"http://127.0.0.1:{policy_config.port}/check")
    base = base.model_copy(update={"tracing": traced(names["te"])})
    token = await keycloak.auser_token("mcp", "mcp")  # fresh: no cached exchange
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {
        **_headers(token, "tools/call", tool="pods_list"),
        "traceparent": f"00-{trace_id}-{parent}-01",
    }
    async with running_policy(policy_config) as policy, running_service(base) as te:
        status, _, payload = await _combined(http, te, headers)
    assert status == 200, payload
    trace = await asyncio.to_thread(
        trace_collector.wait_trace, trace_id, services=set(names.values())
    )
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = [
        (
            services[s["processID"]],
            dict((t["key"], t["value"]) for t in s["tags"]),
            s["spanID"],
            next((r["spanID"] for r in s["references"] if r["refType"] == "CHILD_OF"), None),
        )
        for s in trace["spans"]
    ]

    def only(service: str, kind: str, path_end: str = "") -> tuple[str, str | None]:
        found = [
            (span_id, parent_id)
            for svc, tags, span_id, parent_id in spans
            if svc == service
            and tags.get("span.kind") == kind
            and str(tags.get("url.path", tags.get("http.route", ""))).endswith(path_end)
        ]
        assert len(found) == 1, (service, kind, path_end, spans)
        return found[0]

    te_server, te_parent = only(names["te"], "server")
    assert te_parent == parent
    _, keycloak_parent = only(names["te"], "client", "/protocol/openid-connect/token")
    assert keycloak_parent == te_server
    policy_call, policy_call_parent = only(names["te"], "client", "/check/mcp")
    assert policy_call_parent == te_server
    _, policy_parent = only(names["policy"], "server")
    assert policy_parent == policy_call
    decision = json.loads(policy.decision_log.read_text().strip().splitlines()[-1])
    assert (decision["tool"], decision["trace_id"]) == ("pods_list", trace_id)
