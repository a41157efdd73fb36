"""The policy service end to end over HTTP, with real Keycloak tokens and a real OPA server.

Covers the issue's acceptance list: the demo user sees and may call exactly the tools their roles
grant; the read-only user cannot call destructive tools; deny list and namespace rules; forged and
expired tokens refused; OPA stopped → deny (503) then recovery; the signed header verifies with
the served public key and carries the right tools; an empty list is ``[]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.service import service_of
from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    CHANGING_TOOLS,
    READ_ONLY_TOOLS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.opa_server import OpaServer

ALL_TOOLS = READ_ONLY_TOOLS + CHANGING_TOOLS
OTHER = "team-a/other-mcp"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=CALLER_HEADERS
    ) as session:
        yield session


@pytest.fixture(scope="module")
async def mcp_token(keycloak: Any) -> str:
    token: str = await keycloak.auser_token("mcp", "mcp")
    return token


@pytest.fixture(scope="module")
async def viewer_token(keycloak: Any) -> str:
    token: str = await keycloak.auser_token("viewer", "viewer")
    return token


@pytest.fixture(scope="module")
async def service(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    """The default deployment: embedded engine, the repo's policies and default data."""
    async with running_policy(policy_settings(keycloak, policy_work / "embedded")) as running:
        yield running


def _roles(token: str) -> set[str]:
    return set(kc.decode_jwt(token)["resource_access"][SERVER]["roles"])


def _headers(
    token: str | None, method: str, tool: str | None = None, **extra: str
) -> dict[str, str]:
    headers = {"x-mcp-method": method, "x-mcp-servername": SERVER if tool else "mcpBroker"}
    if tool:
        headers["x-mcp-toolname"] = tool
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers | extra


def _call_body(tool: str, arguments: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    ).encode()


async def _check(
    http: aiohttp.ClientSession, svc: RunningPolicy, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{svc.url}/check/mcp", headers=headers, data=body) as resp:
        payload = await resp.json()
        assert resp.content_type == "application/json"
        assert isinstance(payload["allow"], bool), payload
        assert isinstance(payload["reason"], str), payload
        assert payload["reason"], payload
        return resp.status, payload, resp.headers


# --- tools/list: the signed header


async def test_demo_user_sees_exactly_the_tools_their_roles_grant(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    status, payload, headers = await _check(http, service, _headers(mcp_token, "tools/list"))
    assert status == 200
    assert payload["allow"] is True
    async with http.get(f"{service.url}/v1/wristband/public-key") as resp:
        public_pem = await resp.text()
    claims = verify(headers[LEGACY_HEADER], public_pem)
    allowed = json.loads(claims["allowed-tools"])
    expected = sorted(_roles(mcp_token) & set(ALL_TOOLS))
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
    _, _, headers = await _check(http, service, _headers(viewer_token, "tools/list"))
    allowed = json.loads(verify(headers[LEGACY_HEADER], service.public_key_pem)["allowed-tools"])
    assert allowed[SERVER] == sorted(_roles(viewer_token) & set(ALL_TOOLS))
    assert set(allowed[SERVER]) <= set(READ_ONLY_TOOLS)
    assert allowed[SERVER]


# --- tools/call


async def test_demo_user_may_call_every_granted_tool(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    for tool in ALL_TOOLS:
        body = _call_body(tool, {"namespace": "default", "name": "x"})
        status, payload, _ = await _check(
            http, service, _headers(mcp_token, "tools/call", tool), body
        )
        assert (status, payload["allow"]) == (200, True), (tool, payload)
        assert payload["reason"] == f"mcp holds role {tool} of {SERVER}"


async def test_viewer_cannot_call_destructive_tools(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    for tool in CHANGING_TOOLS:
        body = _call_body(tool, {"namespace": "default"})
        status, payload, _ = await _check(
            http, service, _headers(viewer_token, "tools/call", tool), body
        )
        assert (status, payload["allow"]) == (403, False), tool
        assert payload["reason"] == f"viewer holds no role of {SERVER} that grants tool {tool}"
    status, payload, _ = await _check(
        http,
        service,
        _headers(viewer_token, "tools/call", "pods_list"),
        _call_body("pods_list", {}),
    )
    assert (status, payload["allow"]) == (200, True)


async def test_default_namespace_rule_keeps_exec_out_of_kube_system(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    headers = _headers(mcp_token, "tools/call", "pods_exec")
    status, payload, _ = await _check(
        http, service, headers, _call_body("pods_exec", {"name": "p", "namespace": "kube-system"})
    )
    assert (status, payload["allow"]) == (403, False)
    assert (
        payload["reason"]
        == "pods_exec may not run in namespace kube-system: no shell in system pods"
    )
    # Without the body the rule cannot be checked: deny (fail closed), saying why.
    status, payload, _ = await _check(http, service, headers)
    assert status == 403
    assert "request body was not available" in payload["reason"]
    # A body Envoy cut short counts as unavailable, even if what arrived parses.
    partial = headers | {"x-envoy-auth-partial-body": "true"}
    body = _call_body("pods_exec", {"name": "p", "namespace": "default"})
    status, payload, _ = await _check(http, service, partial, body)
    assert status == 403
    assert "request body was not available" in payload["reason"]
    status, payload, _ = await _check(http, service, headers, body)
    assert (status, payload["allow"]) == (200, True)


async def test_exchanged_token_is_decided_like_the_user_token(
    http: aiohttp.ClientSession, service: RunningPolicy, keycloak: Any, mcp_token: str
) -> None:
    exchanged = (await keycloak.aexchange(mcp_token, audience=SERVER))["access_token"]
    audience = kc.decode_jwt(exchanged)["aud"]
    assert SERVER in (audience if isinstance(audience, list) else [audience])
    status, payload, _ = await _check(
        http,
        service,
        _headers(exchanged, "tools/call", "pods_delete"),
        _call_body("pods_delete", {}),
    )
    assert (status, payload["allow"]) == (200, True)


async def test_methods_without_a_tool_are_allowed_but_need_a_valid_token(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    status, payload, _ = await _check(http, service, _headers(viewer_token, "initialize"))
    assert (status, payload["allow"]) == (200, True)
    status, payload, headers = await _check(http, service, _headers(None, "initialize"))
    assert (status, payload["allow"]) == (401, False)
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_malformed_tool_name_is_a_clear_400(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str
) -> None:
    status, payload, _ = await _check(http, service, _headers(mcp_token, "tools/call", 'pods"list'))
    assert (status, payload["allow"]) == (400, False)
    assert "not a valid MCP tool name" in payload["reason"]
    status, payload, _ = await _check(
        http, service, _headers(mcp_token, "tools/call", "pods_exec"), b"{broken"
    )
    assert (status, payload["allow"]) == (400, False)
    assert "not valid JSON-RPC" in payload["reason"]


# --- tokens


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_are_refused(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    header, _, signature = viewer_token.split(".")
    claims = kc.decode_jwt(viewer_token)
    claims["resource_access"][SERVER]["roles"].append("pods_delete")  # grant itself a tool
    tampered = f"{header}.{_b64(claims)}.{signature}"
    kid = jwt.get_unverified_header(viewer_token)["kid"]
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    resigned = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid})
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    for token, reason in (
        (tampered, "signature verification failed"),
        (resigned, "signature verification failed"),
        (unsigned, "alg 'none'"),
        ("not-a-jwt", "not a JWT"),
    ):
        status, payload, headers = await _check(
            http,
            service,
            _headers(token, "tools/call", "pods_delete"),
            _call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (401, False), reason
        assert reason in payload["reason"]
        assert token not in json.dumps(payload)
        assert "Bearer" in headers["WWW-Authenticate"]


def _admin(keycloak: Any, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(  # noqa: S310 - testbed URL
        f"{keycloak.url}/admin/realms/{REALM_MCP}/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {keycloak.admin_token()}",
            "Content-Type": "application/json",
        },
        method=method,
    )
    with urllib.request.urlopen(req, timeout=30, context=keycloak.ssl_context()) as resp:  # noqa: S310
        raw = resp.read()
        return json.loads(raw) if raw else None


@pytest.fixture
def short_lived_client(keycloak: Any) -> Iterator[str]:
    """A public client whose access tokens live 5 seconds (client attribute override)."""
    client_id = f"policy-short-{uuid.uuid4().hex[:8]}"
    _admin(
        keycloak,
        "POST",
        "clients",
        {
            "clientId": client_id,
            "publicClient": True,
            "directAccessGrantsEnabled": True,
            "standardFlowEnabled": False,
            "attributes": {"access.token.lifespan": "5"},
        },
    )
    uuid_ = _admin(keycloak, "GET", f"clients?clientId={client_id}")[0]["id"]
    try:
        yield client_id
    finally:
        _admin(keycloak, "DELETE", f"clients/{uuid_}")


async def test_expired_token_is_refused(
    http: aiohttp.ClientSession, keycloak: Any, policy_work: Path, short_lived_client: str
) -> None:
    settings = policy_settings(keycloak, policy_work / "strict", leeway_s=0)
    async with running_policy(settings) as svc:
        token = await keycloak.auser_token("mcp", "mcp", client_id=short_lived_client)
        claims = kc.decode_jwt(token)
        assert claims["exp"] - claims["iat"] <= 5
        headers = _headers(token, "tools/call", "pods_list")
        status, payload, _ = await _check(http, svc, headers, _call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)  # still valid
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.5)
        status, payload, _ = await _check(http, svc, headers, _call_body("pods_list", {}))
        assert (status, payload["allow"]) == (401, False)
        assert payload["reason"] == "token refused: token expired"


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
        status, payload, _ = await _check(
            http,
            svc,
            _headers(mcp_token, "tools/call", "pods_delete"),
            _call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (403, False)
        assert (
            payload["reason"]
            == f"pods_delete of {SERVER} is on the deny list: deletes go through change control"
        )
        ok = await _check(
            http,
            svc,
            _headers(mcp_token, "tools/call", "helm_install"),
            _call_body("helm_install", {"chart": "c", "namespace": "apps"}),
        )
        bad = await _check(
            http,
            svc,
            _headers(mcp_token, "tools/call", "helm_install"),
            _call_body("helm_install", {"chart": "c", "namespace": "prod"}),
        )
        assert (ok[0], bad[0]) == (200, 403)
        assert "not among its allowed namespaces: releases live in apps" in bad[1]["reason"]
        # pods_exec in kube-system is allowed now: these data replace the default rules.
        status, _, _ = await _check(
            http,
            svc,
            _headers(mcp_token, "tools/call", "pods_exec"),
            _call_body("pods_exec", {"namespace": "kube-system"}),
        )
        assert status == 200
        # The list hides denied tools.
        _, _, headers = await _check(http, svc, _headers(mcp_token, "tools/list"))
        allowed = json.loads(verify(headers[LEGACY_HEADER], svc.public_key_pem)["allowed-tools"])
        assert "pods_delete" not in allowed[SERVER]
        assert "helm_uninstall" not in allowed[SERVER]
        assert "helm_install" in allowed[SERVER]
        assert len(allowed[SERVER]) == len(ALL_TOOLS) - 2


# --- JSON APIs


async def test_decide_api_answers_json_with_explicit_allow(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    async def decide(body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with http.post(f"{service.url}/v1/decide", json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    status, payload = await decide({"server": SERVER, "tool": "pods_delete"}, viewer_token)
    assert (status, payload["allow"]) == (200, False)
    assert payload["reason"] == f"viewer holds no role of {SERVER} that grants tool pods_delete"
    status, payload = await decide(
        {"server": SERVER, "tool": "pods_list", "annotation_hints": "readOnly=true"}, viewer_token
    )
    assert (status, payload["allow"]) == (200, True)
    status, payload = await decide({"method": "tools/list", "token": viewer_token}, None)
    assert payload["allow"] is True
    assert payload["allowed_tools"][OTHER] == []
    # The signed list rides in the body too (Authorino copies it from there onto the request).
    signed = verify(payload["headers"][LEGACY_HEADER], service.public_key_pem)
    assert json.loads(signed["allowed-tools"]) == payload["allowed_tools"]
    # Authorino may copy the whole Authorization header into the body.
    copied = {"server": SERVER, "tool": "pods_get", "token": f"Bearer {viewer_token}"}
    status, payload = await decide(copied, None)
    assert (status, payload["allow"]) == (200, True)
    status, payload = await decide({"server": SERVER, "tool": "pods_list"}, None)
    assert (status, payload["allow"]) == (401, False)
    async with http.post(
        f"{service.url}/v1/decide",
        data=b"[1,2",
        headers={"Authorization": f"Bearer {viewer_token}"},
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["allow"] is False
        assert "JSON object" in body["reason"]


# --- prompts and denials an agent can read


SERVER_B = "mcp-test/kubernetes-mcp-b"
PROMPT = "cluster-health-check"


@pytest.fixture(scope="module")
async def both_forms(keycloak: Any, policy_work: Path) -> AsyncIterator[RunningPolicy]:
    """The service signing both header forms (as manifests/base configures it)."""
    settings = policy_settings(keycloak, policy_work / "both", wristband={"form": "both"})
    async with running_policy(settings) as running:
        yield running


def _prompt_body(prompt: str, request_id: int | str = 9) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "prompts/get",
            "params": {"name": prompt, "arguments": {}},
        }
    ).encode()


def _prompt_headers(token: str, server: str, prompt: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "x-mcp-method": "prompts/get",
        "x-mcp-servername": server,
        "x-mcp-promptname": prompt,
    }


async def test_prompts_get_is_decided_by_the_prompt_role(
    http: aiohttp.ClientSession, service: RunningPolicy, mcp_token: str, viewer_token: str
) -> None:
    # Realm mcp: mcp-users hold prompt:cluster-health-check on both servers, viewers on A only.
    for token, server, allowed in (
        (mcp_token, SERVER, True),
        (mcp_token, SERVER_B, True),
        (viewer_token, SERVER, True),
        (viewer_token, SERVER_B, False),
    ):
        status, payload, _ = await _check(
            http, service, _prompt_headers(token, server, PROMPT), _prompt_body(PROMPT)
        )
        assert (status, payload["allow"]) == ((200, True) if allowed else (403, False)), payload
        user = kc.decode_jwt(token)["preferred_username"]
        if allowed:
            assert payload["reason"] == f"{user} holds role prompt:{PROMPT} of {server}"
        else:
            assert (
                payload["reason"] == f"{user} holds no role of {server} that grants prompt {PROMPT}"
            )
    # The header must name the prompt the body gets.
    status, payload, _ = await _check(
        http, service, _prompt_headers(viewer_token, SERVER, "other"), _prompt_body(PROMPT)
    )
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-promptname says other" in payload["reason"]


async def test_a_denied_json_rpc_request_is_answered_with_a_json_rpc_error(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    """MCP clients surface a JSON-RPC error body as the request's error (the model sees why)."""
    for headers, body, request_id, names in (
        (_headers(viewer_token, "tools/call", "pods_delete"),
         json.dumps({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call",
                     "params": {"name": "pods_delete", "arguments": {}}}).encode(),
         "call-1", "grants tool pods_delete"),
        (_prompt_headers(viewer_token, SERVER_B, PROMPT), _prompt_body(PROMPT, 12), 12,
         "grants prompt cluster-health-check"),
    ):  # fmt: skip
        status, payload, resp_headers = await _check(http, service, headers, body)
        assert status == 403
        assert payload["jsonrpc"] == "2.0"
        assert payload["id"] == request_id
        assert payload["error"]["code"] == -32003
        message = payload["error"]["message"]
        assert message.startswith("the gateway's policy denied this request: viewer holds no role")
        assert names in message
        assert payload["error"]["data"] == {"allow": False, "reason": payload["reason"]}
        assert "www-authenticate" not in {k.lower() for k in resp_headers}
    # Without a body (or with one that carries no id) the answer stays {allow, reason}.
    status, payload, _ = await _check(
        http, service, _headers(viewer_token, "tools/call", "pods_delete")
    )
    assert status == 403
    assert "jsonrpc" not in payload
    # A refusal that is not a denial keeps its status: 401 stays a plain challenge.
    status, payload, _ = await _check(
        http, service, _headers(None, "tools/call", "pods_delete"), _call_body("pods_delete", {})
    )
    assert status == 401
    assert "jsonrpc" not in payload


async def test_the_signed_header_carries_the_prompts_each_server_grants(
    http: aiohttp.ClientSession, both_forms: RunningPolicy, mcp_token: str, viewer_token: str
) -> None:
    for method in ("tools/list", "prompts/list"):
        for token, prompts in ((mcp_token, [PROMPT]), (viewer_token, [PROMPT])):
            status, payload, headers = await _check(http, both_forms, _headers(token, method))
            assert status == 200
            claims = verify(headers["x-mcp-authorized"], both_forms.public_key_pem)
            capabilities = json.loads(claims["allowed-capabilities"])
            # The catalogue's servers: SERVER (the prompt role) and OTHER (no roles at all).
            assert capabilities["prompts"] == {SERVER: prompts, OTHER: []}
            assert capabilities["tools"][SERVER]
            assert payload["allowed_prompts"] == capabilities["prompts"]
            # The older form carries tools only.
            legacy = verify(headers[LEGACY_HEADER], both_forms.public_key_pem)
            assert json.loads(legacy["allowed-tools"]) == capabilities["tools"]


async def test_decide_api_decides_prompts_too(
    http: aiohttp.ClientSession, both_forms: RunningPolicy, viewer_token: str
) -> None:
    async def decide(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {viewer_token}"}
        async with http.post(f"{both_forms.url}/v1/decide", json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    status, payload = await decide({"method": "prompts/get", "server": SERVER, "prompt": PROMPT})
    assert (status, payload["allow"]) == (200, True)
    status, payload = await decide({"method": "prompts/get", "server": SERVER_B, "prompt": PROMPT})
    assert (status, payload["allow"]) == (200, False)
    assert payload["reason"] == f"viewer holds no role of {SERVER_B} that grants prompt {PROMPT}"
    status, payload = await decide({"method": "prompts/list"})
    assert (status, payload["allow"]) == (200, True)
    assert payload["allowed_prompts"] == {SERVER: [PROMPT], OTHER: []}
    signed = verify(payload["headers"]["x-mcp-authorized"], both_forms.public_key_pem)
    assert json.loads(signed["allowed-capabilities"])["prompts"] == payload["allowed_prompts"]


async def test_filter_api_returns_the_allowed_subset(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str, mcp_token: str
) -> None:
    tools = [
        {"name": "pods_list", "description": "List pods", "annotations": {"readOnlyHint": True}},
        {"name": "pods_delete", "annotations": {"readOnlyHint": False}},
        {"name": "helm_list", "annotations": {"readOnlyHint": True}},
    ]
    rpc = {"jsonrpc": "2.0", "id": 3, "result": {"tools": tools, "nextCursor": None}}
    async with http.post(
        f"{service.url}/v1/filter",
        json={**rpc, "server": SERVER},
        headers={"Authorization": f"Bearer {viewer_token}"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["id"] == 3
    assert [t["name"] for t in body["result"]["tools"]] == ["pods_list", "helm_list"]
    assert body["result"]["tools"][0]["description"] == "List pods"  # untouched
    async with http.post(
        f"{service.url}/v1/filter",
        json={"server": OTHER, "result": {"tools": tools}},
        headers={"Authorization": f"Bearer {mcp_token}"},
    ) as resp:
        body = await resp.json()
    assert body["result"]["tools"] == []


async def test_decision_log_records_who_what_and_why_never_the_token(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    marker = f"x-{uuid.uuid4().hex[:6]}"
    await _check(
        http,
        service,
        _headers(viewer_token, "tools/call", "pods_delete", **{"x-request-id": marker}),
        _call_body("pods_delete", {}),
    )
    lines = [json.loads(line) for line in service.decision_log.read_text().splitlines()]
    entry = next(e for e in lines if e["request_id"] == marker)
    assert entry["user"] == "viewer"
    assert (entry["server"], entry["tool"], entry["decision"]) == (SERVER, "pods_delete", "deny")
    assert entry["reason"].startswith("viewer holds no role")
    assert entry["status"] == 403
    text = service.decision_log.read_text()
    assert viewer_token not in text
    assert viewer_token.split(".")[1] not in text


async def test_health_readiness_and_metrics(
    http: aiohttp.ClientSession, service: RunningPolicy
) -> None:
    async with http.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{service.url}/readyz") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["checks"] == {"engine": "ok", "issuer_keys": "ok"}
    async with http.get(f"{service.url}/metrics") as resp:
        text = await resp.text()
    assert 'policy_decisions_total{decision="deny",endpoint="check"}' in text
    assert "policy_engine_seconds_bucket" in text


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
        call = _headers(viewer_token, "tools/call", "pods_list")
        status, payload, _ = await _check(http, svc, call, _call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)
        status, payload, _ = await _check(
            http,
            svc,
            _headers(viewer_token, "tools/call", "pods_delete"),
            _call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (403, False)
        _, _, headers = await _check(http, svc, _headers(mcp_token, "tools/list"))
        allowed = json.loads(verify(headers[LEGACY_HEADER], svc.public_key_pem)["allowed-tools"])
        assert allowed == {SERVER: sorted(ALL_TOOLS), OTHER: []}

        policy_opa.stop()
        status, payload, _ = await _check(http, svc, call, _call_body("pods_list", {}))
        assert (status, payload["allow"]) == (503, False)
        assert payload["reason"].startswith("policy engine unavailable, denying: OPA at")
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 503

        policy_opa.start()  # a fresh OPA without our policy: the service reloads it by itself
        status, payload, _ = await _check(http, svc, call, _call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 200


# --- the body must match the headers


async def test_headers_that_disagree_with_the_body_are_denied(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    delete = _call_body("resources_delete", {"namespace": "default", "name": "x"})
    # x-mcp-method says ping, no tool header: without the body check this was "names no tool".
    status, payload, _ = await _check(http, service, _headers(viewer_token, "ping"), delete)
    assert (status, payload["allow"]) == (403, False)
    assert payload["reason"].startswith(
        "denied: x-mcp-method says ping but the body is a tools/call request"
    )
    status, payload, _ = await _check(http, service, _headers(viewer_token, "tools/list"), delete)
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-method says tools/list but the body is a tools/call" in payload["reason"]
    # The tool header names an allowed tool, the body calls another one.
    headers = _headers(viewer_token, "tools/call", "pods_list")
    status, payload, _ = await _check(http, service, headers, delete)
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-toolname says pods_list but the body calls resources_delete" in payload["reason"]
    # Without x-mcp-method (and x-mcp-toolname) the body's method and tool are decided.
    bare = {"Authorization": f"Bearer {viewer_token}", "x-mcp-servername": SERVER}
    status, payload, _ = await _check(http, service, bare, delete)
    assert (status, payload["allow"]) == (403, False)
    assert (
        payload["reason"] == f"viewer holds no role of {SERVER} that grants tool resources_delete"
    )
    status, payload, _ = await _check(http, service, bare, _call_body("pods_list", {}))
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"].startswith("viewer holds role ")  # decided on the body's tool
    # A key sent twice could be read either way: refused.
    twice = b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}'
    status, payload, _ = await _check(http, service, _headers(viewer_token, "ping"), twice)
    assert (status, payload["allow"]) == (400, False)
    assert "repeats the key 'method'" in payload["reason"]
    # A cut body cannot show it is not a tools/call: refused for any other method.
    partial = _headers(viewer_token, "initialize") | {"x-envoy-auth-partial-body": "true"}
    status, payload, _ = await _check(http, service, partial, delete[:40])
    assert (status, payload["allow"]) == (403, False)
    assert "cut short by the proxy" in payload["reason"]
    lines = [json.loads(line) for line in service.decision_log.read_text().splitlines()]
    assert any(
        e["decision"] == "deny" and "x-mcp-toolname says pods_list" in e["reason"] for e in lines
    )


async def test_headers_that_match_the_body_behave_as_before(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    initialize = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}
    ).encode()  # fmt: skip
    status, payload, _ = await _check(
        http, service, _headers(viewer_token, "initialize"), initialize
    )
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"] == "method initialize names no tool: no tool decision needed"
    # The router's hairpin initialize on behalf of a call names the tool in the header only: it
    # calls no tool and is allowed; the call that follows is denied with its reason. (Denying the
    # hairpin would turn that denial into the router's opaque "failed to create session".)
    status, payload, _ = await _check(
        http, service, _headers(viewer_token, "initialize", "pods_delete"), initialize
    )
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"] == "method initialize names no tool: no tool decision needed"
    status, payload, _ = await _check(
        http,
        service,
        _headers(viewer_token, "tools/call", "pods_delete"),
        _call_body("pods_delete", {}),
    )
    assert (status, payload["allow"]) == (403, False)
    assert payload["reason"] == f"viewer holds no role of {SERVER} that grants tool pods_delete"
    # No body: the headers decide, as before.
    status, payload, _ = await _check(http, service, _headers(viewer_token, "ping"))
    assert (status, payload["allow"]) == (200, True)
    listing = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
    status, payload, _ = await _check(http, service, _headers(viewer_token, "tools/list"), listing)
    assert (status, payload["allow"]) == (200, True)
    assert payload["allowed_tools"][SERVER]


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
            status, payload, _ = await _check(
                http, svc, _headers(mcp_token, "tools/call", tool), _call_body(tool, arguments)
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
    headers = _headers(mcp_token, "tools/call", tool)
    namespace = f"ns-{uuid.uuid4().hex[:8]}"  # an input no other test decided
    first = {"namespace": namespace, "resource": _SECRET_YAML % "one", "access_token": "a.b.c"}
    second = {
        "namespace": namespace,
        "resource": _SECRET_YAML % "two",
        "access_token": viewer_token,
    }
    hits = engine.cache_hits
    status, _, _ = await _check(http, service, headers, _call_body(tool, first))
    assert status == 200
    assert engine.cache_hits == hits
    status, _, _ = await _check(http, service, headers, _call_body(tool, second))
    assert status == 200
    assert engine.cache_hits == hits + 1  # same projected input: one cache entry, no token in it
