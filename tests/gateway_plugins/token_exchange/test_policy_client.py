"""The combined check's calls to the policy service (``ext_authz.policy_url``): an outage, a
stopped engine or a slow answer is a 503 that recovers; a policy service refusing this service's
credential is a 503, not the user's denial; ``policy_url`` must name the policy's check endpoint.

Real components only: the testbed's Keycloak and the real policy service; stopping the policy
service and starting it again on the same port is the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import ExtAuthzConfig
from tests.gateway_plugins.policy.running import (
    policy_settings,
    running_policy,
)
from tests.gateway_plugins.token_exchange.combined import (
    bearer_of,
    combined_headers,
    post_combined,
    with_policy_url,
)
from tests.gateway_plugins.token_exchange.running import (
    RunningService,
    running_service,
    service_settings,
)
from tests.testbed.fixtures_identity import SessionKeycloak
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(600)


# --- the policy service cannot answer: deny (503), then recover ----------------------------------


async def test_policy_service_down_is_503_then_recovers(
    http: aiohttp.ClientSession,
    token_exchange: RunningService,
    policy_config: PolicySettings,
    mcp_token: str,
) -> None:
    headers = combined_headers(mcp_token, "tools/call", tool="pods_list")
    async with running_policy(policy_config):
        status, _, payload = await post_combined(http, token_exchange, headers)
        assert status == 200, payload
    # stopped: nothing listens on its port any more
    unreachable = token_exchange.runtime.metrics.policy_call_count("unreachable")
    status, answer_headers, payload = await post_combined(http, token_exchange, headers)
    assert status == 503, payload
    assert payload["allow"] is False
    assert payload["error"] == "policy_unreachable"
    assert "fail closed" in payload["reason"]
    assert "authorization" not in answer_headers
    assert mcp_token not in json.dumps(payload)
    assert token_exchange.runtime.metrics.policy_call_count("unreachable") == unreachable + 1
    async with running_policy(policy_config):  # restarted on the same port
        status, answer_headers, payload = await post_combined(http, token_exchange, headers)
        assert status == 200, payload
        assert bearer_of(answer_headers) != mcp_token


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
    settings = with_policy_url(
        service_settings(keycloak, work / "te-secrets"), f"http://127.0.0.1:{config.port}/check"
    )
    async with running_policy(config), running_service(settings) as te:
        status, _, payload = await post_combined(
            http, te, combined_headers(mcp_token, "tools/call", tool="pods_list")
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
    settings = with_policy_url(
        service_settings(keycloak, work / "te-secrets"),
        f"http://127.0.0.1:{port}/check",
        policy_timeout_s=0.5,
    )
    try:
        async with running_service(settings) as te:
            status, _, payload = await post_combined(
                http, te, combined_headers(mcp_token, "tools/call", tool="pods_list")
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
    settings = with_policy_url(
        base,
        f"http://127.0.0.1:{policy_config.port}/check",
        policy_caller_secret_env="KMG_TEST_STALE_POLICY_SECRET",
    )
    headers = combined_headers(mcp_token, "tools/call", tool="pods_list")
    with caplog.at_level(logging.ERROR, logger="gateway_plugins.token_exchange.policy_client"):
        async with running_policy(policy_config), running_service(settings) as te:
            status, answer_headers, payload = await post_combined(http, te, headers)
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
        status, _, payload = await post_combined(
            http, te, combined_headers(mcp_token, "tools/call", tool="pods_list")
        )
        assert status == 503
        assert payload["allow"] is False
        assert payload["error"] == "not_configured"
        assert "combined check needs ext_authz.policy_url" in payload["reason"]
        # the plain check is unaffected
        headers = combined_headers(mcp_token, "tools/call", tool="pods_list")
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
