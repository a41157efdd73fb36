"""The policy service's routes over HTTP: the JSON APIs (``/v1/decide``, ``/v1/filter``), prompts
and the JSON-RPC denial an agent can read, the decision log, the probes and metrics, and the
``/check`` body that must match the headers."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from tests.gateway_plugins.policy.checks import (
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
from tests.testbed import keycloak as kc

pytestmark = pytest.mark.timeout(600)


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
        status, payload, _ = await post_check(
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
    status, payload, _ = await post_check(
        http, service, _prompt_headers(viewer_token, SERVER, "other"), _prompt_body(PROMPT)
    )
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-promptname says other" in payload["reason"]


async def test_a_denied_json_rpc_request_is_answered_with_a_json_rpc_error(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    """MCP clients surface a JSON-RPC error body as the request's error (the model sees why)."""
    for headers, body, request_id, names in (
        (check_headers(viewer_token, "tools/call", "pods_delete"),
         json.dumps({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call",
                     "params": {"name": "pods_delete", "arguments": {}}}).encode(),
         "call-1", "grants tool pods_delete"),
        (_prompt_headers(viewer_token, SERVER_B, PROMPT), _prompt_body(PROMPT, 12), 12,
         "grants prompt cluster-health-check"),
    ):  # fmt: skip
        status, payload, resp_headers = await post_check(http, service, headers, body)
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
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "tools/call", "pods_delete")
    )
    assert status == 403
    assert "jsonrpc" not in payload
    # A refusal that is not a denial keeps its status: 401 stays a plain challenge.
    status, payload, _ = await post_check(
        http,
        service,
        check_headers(None, "tools/call", "pods_delete"),
        call_body("pods_delete", {}),
    )
    assert status == 401
    assert "jsonrpc" not in payload


async def test_the_signed_header_carries_the_prompts_each_server_grants(
    http: aiohttp.ClientSession, both_forms: RunningPolicy, mcp_token: str, viewer_token: str
) -> None:
    for method in ("tools/list", "prompts/list"):
        for token, prompts in ((mcp_token, [PROMPT]), (viewer_token, [PROMPT])):
            status, payload, headers = await post_check(
                http, both_forms, check_headers(token, method)
            )
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
    await post_check(
        http,
        service,
        check_headers(viewer_token, "tools/call", "pods_delete", **{"x-request-id": marker}),
        call_body("pods_delete", {}),
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


# --- the body must match the headers


async def test_headers_that_disagree_with_the_body_are_denied(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    delete = call_body("resources_delete", {"namespace": "default", "name": "x"})
    # x-mcp-method says ping, no tool header: without the body check this was "names no tool".
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "ping"), delete
    )
    assert (status, payload["allow"]) == (403, False)
    assert payload["reason"].startswith(
        "denied: x-mcp-method says ping but the body is a tools/call request"
    )
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "tools/list"), delete
    )
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-method says tools/list but the body is a tools/call" in payload["reason"]
    # The tool header names an allowed tool, the body calls another one.
    headers = check_headers(viewer_token, "tools/call", "pods_list")
    status, payload, _ = await post_check(http, service, headers, delete)
    assert (status, payload["allow"]) == (403, False)
    assert "x-mcp-toolname says pods_list but the body calls resources_delete" in payload["reason"]
    # Without x-mcp-method (and x-mcp-toolname) the body's method and tool are decided.
    bare = {"Authorization": f"Bearer {viewer_token}", "x-mcp-servername": SERVER}
    status, payload, _ = await post_check(http, service, bare, delete)
    assert (status, payload["allow"]) == (403, False)
    assert (
        payload["reason"] == f"viewer holds no role of {SERVER} that grants tool resources_delete"
    )
    status, payload, _ = await post_check(http, service, bare, call_body("pods_list", {}))
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"].startswith("viewer holds role ")  # decided on the body's tool
    # A key sent twice could be read either way: refused.
    twice = b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}'
    status, payload, _ = await post_check(http, service, check_headers(viewer_token, "ping"), twice)
    assert (status, payload["allow"]) == (400, False)
    assert "repeats the key 'method'" in payload["reason"]
    # A cut body cannot show it is not a tools/call: refused for any other method.
    partial = check_headers(viewer_token, "initialize") | {"x-envoy-auth-partial-body": "true"}
    status, payload, _ = await post_check(http, service, partial, delete[:40])
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
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "initialize"), initialize
    )
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"] == "method initialize names no tool: no tool decision needed"
    # The router's hairpin initialize on behalf of a call names the tool in the header only: it
    # calls no tool and is allowed; the call that follows is denied with its reason. (Denying the
    # hairpin would turn that denial into the router's opaque "failed to create session".)
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "initialize", "pods_delete"), initialize
    )
    assert (status, payload["allow"]) == (200, True)
    assert payload["reason"] == "method initialize names no tool: no tool decision needed"
    status, payload, _ = await post_check(
        http,
        service,
        check_headers(viewer_token, "tools/call", "pods_delete"),
        call_body("pods_delete", {}),
    )
    assert (status, payload["allow"]) == (403, False)
    assert payload["reason"] == f"viewer holds no role of {SERVER} that grants tool pods_delete"
    # No body: the headers decide, as before.
    status, payload, _ = await post_check(http, service, check_headers(viewer_token, "ping"))
    assert (status, payload["allow"]) == (200, True)
    listing = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
    status, payload, _ = await post_check(
        http, service, check_headers(viewer_token, "tools/list"), listing
    )
    assert (status, payload["allow"]) == (200, True)
    assert payload["allowed_tools"][SERVER]
