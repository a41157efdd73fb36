"""Issue 14 items 1 and 2 at the policy service: only the gateway may ask it, and only tokens
addressed to the gateway (or to a server behind it) count.

Before the fix any pod that reached the service could POST ``/check``, ``/v1/decide`` or
``/v1/filter`` with a user's token and get decisions and signed tool lists; and, the audience
lists being empty, a genuine token of another client of the realm (``admin-cli``) was decided
like a gateway token. Real Keycloak tokens, the real service over HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway_plugins.common.jwt_validation import IssuerConfig
from gateway_plugins.policy.wristband import LEGACY_HEADER
from tests.gateway_plugins.policy.running import (
    CALLER_HEADER,
    CALLER_HEADERS,
    CALLER_SECRET,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

SIGNED_HEADERS = (LEGACY_HEADER, "x-mcp-authorized")
WRONG_SECRET = "not-the-gateways-secret-test-only"  # test-only value


@pytest.fixture(scope="module")
async def service(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    async with running_policy(policy_settings(keycloak, policy_work / "caller-auth")) as running:
        yield running


def _route(method: str, server: str) -> dict[str, str]:
    return {"x-mcp-method": method, "x-mcp-servername": server}


def _requests(token: str) -> dict[str, tuple[str, dict[str, str], bytes]]:
    """One request per protected endpoint, as the gateway sends it: path, headers, body."""
    auth = {"Authorization": f"Bearer {token}"}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pods_list", "arguments": {"namespace": "default"}}}  # fmt: skip
    json_type = {"Content-Type": "application/json"}
    return {
        "check tools/call": (
            "/check/mcp",
            {**auth, **_route("tools/call", SERVER), "x-mcp-toolname": "pods_list"},
            json.dumps(call).encode(),
        ),
        "check tools/list": (
            "/check/mcp",
            {**auth, **_route("tools/list", "mcpBroker")},
            b"",
        ),
        "decide": (
            "/v1/decide",
            {**auth, **json_type},
            json.dumps({"server": SERVER, "tool": "pods_list"}).encode(),
        ),
        "filter": (
            "/v1/filter",
            {**auth, **json_type},
            json.dumps({"server": SERVER, "result": {"tools": [{"name": "pods_list"}]}}).encode(),
        ),
    }


async def _post(
    url: str, headers: dict[str, str], body: bytes
) -> tuple[int, str, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, headers=headers, data=body) as resp,
    ):
        return resp.status, resp.content_type, await resp.json(), dict(resp.headers)


def _decisions(service: RunningPolicy) -> int:
    log = service.decision_log
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_the_checks_refuse_a_caller_without_the_gateways_credential(
    service: RunningPolicy, viewer_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: a pod around the gateway asks for a decision and a signed tool list."""
    credentials = {
        "none": {},
        "empty": {CALLER_HEADER: ""},
        "wrong": {CALLER_HEADER: WRONG_SECRET},
        "the right value in another header": {"x-caller-secret": CALLER_SECRET},
        "the right value as a prefix": {CALLER_HEADER: CALLER_SECRET + "x"},
    }
    logged = _decisions(service)
    with caplog.at_level(logging.WARNING, logger="gateway_plugins.common.caller_auth"):
        for name, (path, headers, body) in _requests(viewer_token).items():
            for what, credential in credentials.items():
                status, ctype, answer, resp_headers = await _post(
                    service.url + path, {**headers, **credential}, body
                )
                assert (status, ctype) == (403, "application/json"), (name, what, answer)
                assert answer["allow"] is False, (name, what)
                assert answer["error"] == "caller_unauthenticated", (name, what)
                assert CALLER_HEADER in answer["reason"], (name, what)
                # nothing decided: no decision, no signed list, no tool list
                assert set(answer) == {"allow", "error", "reason"}, (name, what)
                assert not set(resp_headers) & set(SIGNED_HEADERS), (name, what)
                assert WRONG_SECRET not in json.dumps(answer)
    assert _decisions(service) == logged, "a refused caller must not reach a decision"
    assert "refused an unauthenticated caller of POST /v1/decide" in caplog.text
    assert WRONG_SECRET not in caplog.text
    assert CALLER_SECRET not in caplog.text


async def test_the_gateway_with_its_credential_is_served(
    service: RunningPolicy, viewer_token: str
) -> None:
    logged = _decisions(service)
    for name, (path, headers, body) in _requests(viewer_token).items():
        status, _, answer, resp_headers = await _post(
            service.url + path, {**headers, **CALLER_HEADERS}, body
        )
        assert (status, answer["allow"]) == (200, True), (name, answer)
        if name == "check tools/list":
            assert set(resp_headers) & set(SIGNED_HEADERS), resp_headers
        if name == "filter":
            assert answer["result"]["tools"] == [{"name": "pods_list"}]
    assert _decisions(service) == logged + 4


async def test_probes_and_the_public_key_need_no_credential(service: RunningPolicy) -> None:
    """Kubelet's probes, Prometheus and the broker's key fetch are not the gateway's checks."""
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"):
            async with http.get(service.url + path) as resp:
                assert resp.status == 200, path


def _shipped_issuer(keycloak: kc.Keycloak) -> IssuerConfig:
    """The issuer entry of manifests/base/policy/config.yaml, pointed at the testbed's realm."""
    doc = yaml.safe_load((REPO_ROOT / "manifests/base/policy/config.yaml").read_text())
    (entry,) = doc["auth"]["issuers"]
    return IssuerConfig.model_validate({**entry, "issuer": keycloak.issuer(REALM_MCP)})


async def test_a_token_of_another_client_is_refused_under_the_shipped_audiences(
    keycloak: Any, policy_work: Path
) -> None:
    """Issue 14 item 2: a genuine realm-mcp token issued to admin-cli (the viewer's own password
    grant there) was decided like a gateway token, the shipped audience list being empty."""
    settings = policy_settings(keycloak, policy_work / "shipped-audiences")
    settings = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"issuers": [_shipped_issuer(keycloak)]})}
    )
    other = await keycloak.auser_token("viewer", "viewer", client_id="admin-cli")
    assert kc.decode_jwt(other)["azp"] == "admin-cli"
    own = await keycloak.auser_token("viewer", "viewer")
    async with running_policy(settings) as svc:
        logged = _decisions(svc)
        for name, (path, headers, body) in _requests(other).items():
            status, _, answer, resp_headers = await _post(
                svc.url + path, {**headers, **CALLER_HEADERS}, body
            )
            assert (status, answer["allow"]) == (401, False), (name, answer)
            assert "token audience is not one of" in answer["reason"], (name, answer)
            assert "mcp-gateway" in answer["reason"]
            assert resp_headers["WWW-Authenticate"].startswith("Bearer"), name
            assert not set(resp_headers) & set(SIGNED_HEADERS), name
            assert answer.get("result", {}).get("tools", []) == [], name
        # the same user's token of the gateway's client is decided
        for name, (path, headers, body) in _requests(own).items():
            status, _, answer, _ = await _post(svc.url + path, {**headers, **CALLER_HEADERS}, body)
            assert (status, answer["allow"]) == (200, True), (name, answer)
        assert _decisions(svc) == logged + 8  # refusals are logged as denials, with the reason
