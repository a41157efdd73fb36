"""The policy service end to end over HTTP, with real Keycloak tokens: what it decides.

The demo user sees and may call exactly the tools their roles grant; the read-only user cannot
call destructive tools; deny list, namespace rules and groups switched by data; the signed header
verifies with the served public key and carries the right tools; an empty list is ``[]``. The
routes' answers are in ``test_routes.py``, forged and expired tokens in
``test_token_refusals.py``, the OPA mode and what reaches the engines in ``test_engines.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from tests.gateway_plugins.policy.checks import (
    ALL_TOOLS,
    OTHER,
    call_body,
    check_headers,
    post_check,
    roles_of,
)
from tests.gateway_plugins.policy.running import (
    CHANGING_TOOLS,
    READ_ONLY_TOOLS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed import keycloak as kc

pytestmark = pytest.mark.timeout(600)


# --- tools/list: the signed header


async def test_demo_user_sees_exactly_the_tools_their_roles_grant(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    status, payload, headers = await post_check(
        http, service, check_headers(mcp_token, "tools/list")
    )
    assert status == 200
    assert payload["allow"] is True
    async with http.get(f"{service.url}/v1/wristband/public-key") as resp:
        public_pem = await resp.text()
    claims = verify(headers[LEGACY_HEADER], public_pem)
    allowed = json.loads(claims["allowed-tools"])
    expected = sorted(roles_of(mcp_token) & set(ALL_TOOLS))
    assert len(expected) == len(ALL_TOOLS)  # the demo user holds every tool role
    assert allowed == {SERVER: expected, OTHER: []}
    assert f'"{OTHER}":[]' in claims["allowed-tools"]  # empty list is [], never null
    assert claims["exp"] - claims["iat"] == 300
    # The same key is served as a JWKS.
    async with http.get(f"{service.url}/.well-known/jwks.json") as resp:
        jwk = (await resp.json())["keys"][0]
    jwt.decode(headers[LEGACY_HEADER], jwt.PyJWK(jwk).key, algorithms=["ES256"])


async def test_viewer_sees_only_read_only_tools(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    _, _, headers = await post_check(http, service, check_headers(viewer_token, "tools/list"))
    allowed = json.loads(verify(headers[LEGACY_HEADER], service.public_key_pem)["allowed-tools"])
    assert allowed[SERVER] == sorted(roles_of(viewer_token) & set(ALL_TOOLS))
    assert set(allowed[SERVER]) <= set(READ_ONLY_TOOLS)
    assert allowed[SERVER]


# --- tools/call


async def test_demo_user_may_call_every_granted_tool(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    for tool in ALL_TOOLS:
        body = call_body(tool, {"namespace": "default", "name": "x"})
        status, payload, _ = await post_check(
            http, service, check_headers(mcp_token, "tools/call", tool), body
        )
        assert (status, payload["allow"]) == (200, True), (tool, payload)
        assert payload["reason"] == f"mcp holds role {tool} of {SERVER}"


async def test_viewer_cannot_call_destructive_tools(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    for tool in CHANGING_TOOLS:
        body = call_body(tool, {"namespace": "default"})
        status, payload, _ = await post_check(
            http, service, check_headers(viewer_token, "tools/call", tool), body
        )
        assert (status, payload["allow"]) == (403, False), tool
        assert payload["reason"] == f"viewer holds no role of {SERVER} that grants tool {tool}"
    status, payload, _ = await post_check(
        http,
        service,
        check_headers(viewer_token, "tools/call", "pods_list"),
        call_body("pods_list", {}),
    )
    assert (status, payload["allow"]) == (200, True)


async def test_default_namespace_rule_keeps_exec_out_of_kube_system(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    headers = check_headers(mcp_token, "tools/call", "pods_exec")
    status, payload, _ = await post_check(
        http, service, headers, call_body("pods_exec", {"name": "p", "namespace": "kube-system"})
    )
    assert (status, payload["allow"]) == (403, False)
    assert (
        payload["reason"]
        == "pods_exec may not run in namespace kube-system: no shell in system pods"
    )
    # Without the body the rule cannot be checked: deny (fail closed), saying why.
    status, payload, _ = await post_check(http, service, headers)
    assert status == 403
    assert "request body was not available" in payload["reason"]
    # A body Envoy cut short counts as unavailable, even if what arrived parses.
    partial = headers | {"x-envoy-auth-partial-body": "true"}
    body = call_body("pods_exec", {"name": "p", "namespace": "default"})
    status, payload, _ = await post_check(http, service, partial, body)
    assert status == 403
    assert "request body was not available" in payload["reason"]
    status, payload, _ = await post_check(http, service, headers, body)
    assert (status, payload["allow"]) == (200, True)


async def test_exchanged_token_is_decided_like_the_user_token(
    http: aiohttp.ClientSession, service: RunningPolicy, keycloak: Any, mcp_token: str
) -> None:
    exchanged = (await keycloak.aexchange(mcp_token, audience=SERVER))["access_token"]
    audience = kc.decode_jwt(exchanged)["aud"]
    assert SERVER in (audience if isinstance(audience, list) else [audience])
    status, payload, _ = await post_check(
        http,
        service,
        check_headers(exchanged, "tools/call", "pods_delete"),
        call_body("pods_delete", {}),
    )
    assert (status, payload["allow"]) == (200, True)


async def test_methods_without_a_tool_are_allowed_but_need_a_valid_token(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    status, payload, _ = await post_check(http, service, check_headers(viewer_token, "initialize"))
    assert (status, payload["allow"]) == (200, True)
    status, payload, headers = await post_check(http, service, check_headers(None, "initialize"))
    assert (status, payload["allow"]) == (401, False)
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_malformed_tool_name_is_a_clear_400(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    status, payload, _ = await post_check(
        http, service, check_headers(mcp_token, "tools/call", 'pods"list')
    )
    assert (status, payload["allow"]) == (400, False)
    assert "not a valid MCP tool name" in payload["reason"]
    status, payload, _ = await post_check(
        http, service, check_headers(mcp_token, "tools/call", "pods_exec"), b"{broken"
    )
    assert (status, payload["allow"]) == (400, False)
    assert "not valid JSON-RPC" in payload["reason"]


# --- data switches: deny list, namespace rules, groups


async def test_deny_list_and_namespace_rules_switched_by_data(
    http: aiohttp.ClientSession, keycloak: Any, policy_work: Path, mcp_token: str
) -> None:
    data = policy_work / "custom-data"
    data.mkdir(exist_ok=True)
    (data / "deny.json").write_text(
        json.dumps(
            {
                "deny_list": [
                    {
                        "tools": ["pods_delete", "helm_uninstall"],
                        "reason": "deletes go through change control",
                    },
                    {
                        "tools": ["*"],
                        "groups": ["accounting"],
                        "servers": [OTHER],
                        "reason": "not for accounting",
                    },
                ]
            }
        )
    )
    (data / "namespaces.json").write_text(
        json.dumps(
            {
                "namespace_rules": [
                    {
                        "tools": ["helm_install"],
                        "allowed_namespaces": ["apps"],
                        "reason": "releases live in apps",
                    },
                ]
            }
        )
    )
    settings = policy_settings(keycloak, policy_work / "custom", data_dirs=[data])
    async with running_policy(settings) as svc:
        status, payload, _ = await post_check(
            http,
            svc,
            check_headers(mcp_token, "tools/call", "pods_delete"),
            call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (403, False)
        assert (
            payload["reason"]
            == f"pods_delete of {SERVER} is on the deny list: deletes go through change control"
        )
        ok = await post_check(
            http,
            svc,
            check_headers(mcp_token, "tools/call", "helm_install"),
            call_body("helm_install", {"chart": "c", "namespace": "apps"}),
        )
        bad = await post_check(
            http,
            svc,
            check_headers(mcp_token, "tools/call", "helm_install"),
            call_body("helm_install", {"chart": "c", "namespace": "prod"}),
        )
        assert (ok[0], bad[0]) == (200, 403)
        assert "not among its allowed namespaces: releases live in apps" in bad[1]["reason"]
        # pods_exec in kube-system is allowed now: these data replace the default rules.
        status, _, _ = await post_check(
            http,
            svc,
            check_headers(mcp_token, "tools/call", "pods_exec"),
            call_body("pods_exec", {"namespace": "kube-system"}),
        )
        assert status == 200
        # The list hides denied tools.
        _, _, headers = await post_check(http, svc, check_headers(mcp_token, "tools/list"))
        allowed = json.loads(verify(headers[LEGACY_HEADER], svc.public_key_pem)["allowed-tools"])
        assert "pods_delete" not in allowed[SERVER]
        assert "helm_uninstall" not in allowed[SERVER]
        assert "helm_install" in allowed[SERVER]
        assert len(allowed[SERVER]) == len(ALL_TOOLS) - 2
