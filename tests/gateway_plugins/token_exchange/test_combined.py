"""The combined ext_authz check (``/ext-authz/combined``): exchange, then the policy decision, in
one round trip, for Istio gateways with a single CUSTOM provider (issue 7).

Real components only: the testbed's Keycloak issues and exchanges the tokens, the real policy
service (``tests/gateway_plugins/policy/running.py``, embedded engine, the repo's policies) makes
the decisions. The combined check's calls to the policy service (its URL, its credential, its
outages) are in ``test_policy_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import aiohttp
import pytest

from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from kmg_common.tracing import TracingSettings
from tests.gateway_plugins.policy.running import (
    CHANGING_TOOLS,
    READ_ONLY_TOOLS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.gateway_plugins.token_exchange.combined import (
    COMBINED,
    bearer_of,
    combined_headers,
    post_combined,
    with_policy_url,
)
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADER,
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed import keycloak as kc
from tests.testbed.fixtures_identity import SessionKeycloak
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.jaeger import Jaeger

pytestmark = pytest.mark.timeout(600)


# --- allowed: the exchanged token goes upstream --------------------------------------------------


async def test_mcp_user_tool_call_is_allowed_with_the_exchanged_token(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    mcp_token: str,
) -> None:
    before = token_exchange.runtime.metrics.policy_call_count("allow")
    status, headers, payload = await post_combined(
        http, token_exchange, combined_headers(mcp_token, "tools/call", tool="pods_list")
    )
    assert status == 200, payload
    assert payload["allow"] is True
    assert payload["exchanged"] is True
    assert payload["reason"]  # the policy's reason travels along
    exchanged = bearer_of(headers)
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
    status, headers, payload = await post_combined(
        http, token_exchange, combined_headers(mcp_token, "tools/list", server="mcpBroker")
    )
    assert status == 200, payload
    assert payload == {"allow": True, "exchanged": False, "reason": payload["reason"]}
    assert "authorization" not in headers  # Envoy keeps the caller's own header
    allowed = json.loads(verify(headers[LEGACY_HEADER], policy.public_key_pem)["allowed-tools"])
    assert set(allowed[SERVER]) == set(READ_ONLY_TOOLS + CHANGING_TOOLS)
    # Aimed at the backend: exchanged, and the list is signed for the exchanged token's user.
    status, headers, payload = await post_combined(
        http, token_exchange, combined_headers(mcp_token, "tools/list")
    )
    assert status == 200, payload
    assert payload["exchanged"] is True
    assert kc.decode_jwt(bearer_of(headers))["aud"] in (BACKEND_AUDIENCE, [BACKEND_AUDIENCE])
    signed = verify(headers[LEGACY_HEADER], policy.public_key_pem)
    assert json.loads(signed["allowed-tools"])[SERVER] == allowed[SERVER]


# --- denied ------------------------------------------------------------------------------------


async def test_viewer_on_a_destructive_tool_gets_the_policys_403(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy: RunningPolicy,
    viewer_token: str,
) -> None:
    headers = combined_headers(viewer_token, "tools/call", tool="pods_delete")
    status, answer_headers, payload = await post_combined(http, token_exchange, headers)
    assert status == 403, payload
    assert payload["allow"] is False
    assert payload["error"] == "policy_denied"
    assert "authorization" not in answer_headers  # nothing for upstream on a deny
    # The reason is the policy service's own, word for word.
    exchanged = await token_exchange.runtime.require().token_for(viewer_token, SERVER)
    direct = combined_headers(exchanged, "tools/call", tool="pods_delete")
    async with http.post(f"{policy.url}/check/mcp", headers=direct) as resp:
        assert resp.status == 403
        assert payload["reason"] == (await resp.json())["reason"]
    assert "pods_delete" in payload["reason"]
    # The same user may use a read-only tool: the 403 was the policy's decision, not the exchange.
    ok = combined_headers(viewer_token, "tools/call", tool="pods_list")
    status, _, payload = await post_combined(http, token_exchange, ok)
    assert status == 200, payload


async def test_no_token_is_401_and_the_policy_is_not_asked(
    http: aiohttp.ClientSession, token_exchange: RunningService, policy: RunningPolicy
) -> None:
    before = token_exchange.runtime.metrics.policy_call_count()
    status, headers, payload = await post_combined(
        http, token_exchange, combined_headers(None, "tools/call", tool="pods_list")
    )
    assert status == 401
    assert payload["allow"] is False
    assert payload["reason"] == "no bearer token"
    assert headers["WWW-Authenticate"].startswith("Bearer resource_metadata=")
    status, _, payload = await post_combined(
        http, token_exchange, combined_headers("not-a-jwt", "tools/call", tool="pods_list")
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
        headers = combined_headers(
            mcp_token, "tools/call", server="no-such-target", tool="pods_list"
        )
        async with http.post(f"{token_exchange.url}{path}", headers=headers) as resp:
            assert resp.status == 403, path
            assert (await resp.json())["error"] == "unknown_target", path


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
            k: v for k, v in combined_headers(mcp_token, "tools/call", tool="pods_list").items()
            if k != CALLER_HEADER
        }  # fmt: skip
        status, answer_headers, payload = await post_combined(
            http, token_exchange, headers | credential
        )
        assert (status, payload["allow"]) == (403, False), payload
        assert payload["error"] == "caller_unauthenticated"
        assert "authorization" not in answer_headers
        assert LEGACY_HEADER not in answer_headers
    assert (metrics.sts_call_count(), metrics.policy_call_count()) == (sts, asked)


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
    base = with_policy_url(base, f"http://127.0.0.1:{policy_config.port}/check")
    base = base.model_copy(update={"tracing": traced(names["te"])})
    token = await keycloak.auser_token("mcp", "mcp")  # fresh: no cached exchange
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {
        **combined_headers(token, "tools/call", tool="pods_list"),
        "traceparent": f"00-{trace_id}-{parent}-01",
    }
    async with running_policy(policy_config) as policy, running_service(base) as te:
        status, _, payload = await post_combined(http, te, headers)
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
