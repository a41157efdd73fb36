"""The policy service's HTTP routes (aiohttp): ext_authz check, JSON APIs, JWKS.

Routes (besides ``/healthz``, ``/readyz``, ``/metrics`` from the shared scaffold):

* ``/check`` and ``/check/<anything>`` (any method): the Envoy / Istio ext_authz HTTP check.
  ``tools/call`` and ``prompts/get`` → 200 allow or 403 deny (a JSON-RPC error naming the reason
  and the request's id, so MCP clients show it to the model); ``tools/list`` and
  ``prompts/list`` → 200 with the signed header(s); other methods → 200 (they name no tool).
  Token problems → 401, engine down → 503.
* ``POST /v1/decide``: one decision as JSON (for Authorino metadata calls and scripts).
* ``POST /v1/filter``: a tools/list result plus a token → the allowed subset.
* ``GET /.well-known/jwks.json`` and ``GET /v1/wristband/public-key``: the header's public key.

Every route but ``/check`` and the probes refuses a foreign ``Host`` (421) or ``Origin`` (403)
first (``kmg_common/host_origin.py``: DNS rebinding protection).

Every answer, allow or deny, is JSON with an explicit ``allow`` and a ``reason``: Authorino does not
look at the HTTP status of metadata calls, so a missing field must never read as "allow".

``/check``, ``/v1/decide`` and ``/v1/filter`` answer only the gateway (``caller_auth``: a shared
secret header or an mTLS client certificate; 403 ``caller_unauthenticated`` otherwise). A tool's
annotations come from the catalogue when it knows the tool; the gateway's
``x-mcp-annotation-hints`` (or the request's ``annotations``) only for tools it does not know.

Each decision route is three small steps (parse, judge, answer) run by
:func:`.pipeline.run_decision`, which verifies the token and records the decision once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator, protect
from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy import request_body
from gateway_plugins.policy.input import InputError
from gateway_plugins.policy.pipeline import Asked, Decision, answer, answer_json, run_decision
from gateway_plugins.policy.request_body import HeaderMismatch
from gateway_plugins.policy.service import PolicyService, service_of

H_METHOD = "x-mcp-method"
H_SERVER = "x-mcp-servername"
H_TOOL = "x-mcp-toolname"
H_HINTS = "x-mcp-annotation-hints"
H_PROMPT = "x-mcp-promptname"
H_PARTIAL_BODY = "x-envoy-auth-partial-body"

LIST_METHODS = frozenset({"tools/list", "prompts/list"})  # answered with the signed header(s)
NAMED_METHODS = frozenset({"tools/call", "prompts/get"})  # decided per tool / per prompt
# JSON-RPC error code of a request the gateway's policy refused (implementation-defined range).
POLICY_DENIED_CODE = -32003


def add_routes(app: web.Application, caller: CallerAuthenticator) -> None:
    """The service's routes; the decision routes answer only the authenticated gateway."""
    app.router.add_route("*", "/check", protect(handle_check, caller))
    app.router.add_route("*", "/check/{tail:.*}", protect(handle_check, caller))
    app.router.add_post("/v1/decide", protect(handle_decide, caller))
    app.router.add_post("/v1/filter", protect(handle_filter, caller))
    app.router.add_get("/.well-known/jwks.json", handle_jwks)
    app.router.add_get("/v1/wristband/public-key", handle_public_key)


# ----------------------------------------------------------------------------------------------
# steps shared by /check and /v1/decide
# ----------------------------------------------------------------------------------------------
def _check_names(asked: Asked) -> None:
    """Refuse a malformed server, prompt or tool name before any decision."""
    if asked.server:
        policy_input.check_server_name(asked.server)
    if asked.method == "prompts/get":
        if asked.prompt:
            policy_input.check_prompt_name(asked.prompt)
    elif asked.tool:
        policy_input.check_tool_name(asked.tool)


async def _authorize_prompt(service: PolicyService, asked: Asked) -> tuple[bool, str]:
    return await service.authorize_call(
        method=asked.method,
        server=asked.server,
        tool="",
        annotations={},
        claims=asked.verified_claims,
        arguments=None,
        prompt=asked.prompt,
    )


async def _authorize_tool(
    service: PolicyService,
    asked: Asked,
    annotations: policy_input.Annotations,
    arguments: Mapping[str, Any] | None,
) -> tuple[bool, str]:
    return await service.authorize_call(
        method=asked.method or "tools/call",
        server=asked.server,
        tool=asked.tool,
        annotations=annotations,
        claims=asked.verified_claims,
        arguments=arguments,
    )


# ----------------------------------------------------------------------------------------------
# ext_authz check
# ----------------------------------------------------------------------------------------------
async def handle_check(request: web.Request) -> web.Response:
    return await run_decision(request, "check", _parse_check, _judge_check, _answer_check)


async def _parse_check(request: web.Request, asked: Asked) -> tuple[str | None, web.Request]:
    """The headers; the body is read only after the token passed (:func:`_judge_check`)."""
    asked.method = request.headers.get(H_METHOD, "").strip()
    asked.server = request.headers.get(H_SERVER, "").strip()
    asked.tool = request.headers.get(H_TOOL, "").strip()
    asked.prompt = request.headers.get(H_PROMPT, "").strip()
    return request.headers.get("Authorization"), request


async def _judge_check(service: PolicyService, asked: Asked, request: web.Request) -> Decision:
    body = await _read_body(request, asked.method)
    if body is not None:
        asked.request_id = body.request_id
    asked.method, asked.tool, asked.prompt = _reconcile(
        asked.method, asked.tool, asked.prompt, body
    )
    if asked.method in LIST_METHODS:
        return await _judge_check_list(service, asked)
    names_tool = bool(asked.tool) and asked.server != policy_input.BROKER_SERVER
    if asked.method not in NAMED_METHODS and not names_tool:
        asked.tool = asked.prompt = ""  # recorded as naming neither
        return Decision(
            True, f"method {asked.method or '(none)'} names no tool: no tool decision needed"
        )
    _check_names(asked)
    if asked.method == "prompts/get":
        allow, reason = await _authorize_prompt(service, asked)
    else:
        hints = policy_input.parse_annotation_hints(request.headers.get(H_HINTS))
        allow, reason = await _authorize_tool(
            service, asked, hints, body.arguments if body is not None else None
        )
    return Decision(allow, reason, 200 if allow else 403)


def _answer_check(asked: Asked, decision: Decision) -> web.Response:
    if decision.status == 403 and asked.request_id is not None:
        return _jsonrpc_denial(decision.reason, asked.request_id, decision.headers)
    return answer_json(asked, decision)


def _jsonrpc_denial(reason: str, request_id: str | int, headers: Mapping[str, str]) -> web.Response:
    """A denied JSON-RPC request answered as a JSON-RPC error carrying the request's id.

    MCP clients turn an error body at a non-2xx status into the request's error (the ``mcp``
    SDK's ``MCPError``; the TypeScript SDK quotes the body), so an agent sees why. The body also
    keeps ``allow: false`` and ``reason`` at the top, like every other answer of this service.
    """
    message = f"the gateway's policy denied this request: {reason}"
    payload = {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": POLICY_DENIED_CODE,
            "message": message,
            "data": {"allow": False, "reason": reason},
        },
        "allow": False,
        "reason": reason,
    }
    return web.json_response(payload, status=403, headers=dict(headers))


async def _read_body(request: web.Request, method: str) -> request_body.RequestBody | None:
    """The JSON-RPC body Envoy forwarded (``with_request_body``), parsed; None when absent.

    A body Envoy cut at ``max_request_bytes`` cannot be read: for ``tools/call`` its arguments
    count as unavailable (namespace rules then deny), and for any other method the request is
    refused, since the body could be a tools/call the headers hide.
    """
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        return None
    if request.headers.get(H_PARTIAL_BODY, "").lower() == "true":
        if method == "tools/call":
            return None
        raise HeaderMismatch(
            f"x-mcp-method says {policy_input.safe_text(method or '(none)', 64)} but the body "
            "was cut short by the proxy (x-envoy-auth-partial-body), so it cannot be checked; "
            "raise the proxy's max_request_bytes or send a smaller request"
        )
    return request_body.parse_request_body(raw)


def _reconcile(
    method: str, tool: str, prompt: str, body: request_body.RequestBody | None
) -> tuple[str, str, str]:
    """The method, tool and prompt to decide on: the headers, which must describe the body.

    No body: the headers decide, as they always did. A whole body: its method (and, for
    ``tools/call`` / ``prompts/get``, its ``params.name``) must match ``x-mcp-method`` /
    ``x-mcp-toolname`` / ``x-mcp-promptname``; a missing header takes the body's value.
    """
    if body is None:
        return method, tool, prompt
    method, tool = request_body.reconcile(method, tool, body)
    return method, tool, request_body.reconcile_prompt(prompt, body)


async def _judge_check_list(service: PolicyService, asked: Asked) -> Decision:
    if service.signer is None:
        decision = Decision(
            True, f"{asked.method} allowed; no signed list (wristband.signing_key_file is not set)"
        )
    else:
        signed = await service.wristband(asked.verified_claims, asked.token)
        count = sum(len(v) for v in signed.allowed.values())
        prompts = sum(len(v) for v in signed.prompts.values())
        reason = (
            f"{asked.method} allowed; signed list of {count} tool(s) and {prompts} prompt(s) on "
            f"{len(signed.allowed)} server(s)"
        )
        body = {"allowed_tools": signed.allowed, "allowed_prompts": signed.prompts}
        decision = Decision(True, reason, headers=signed.headers, body=body)
    asked.tool = asked.prompt = ""  # recorded as naming neither
    return decision


# ----------------------------------------------------------------------------------------------
# JSON APIs
# ----------------------------------------------------------------------------------------------
async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than any real request
        raise InputError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    return body


def _authorization(request: web.Request, body: Mapping[str, Any]) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        return header
    token = body.get("token")  # a bare token, or a copied Authorization value ("Bearer ...")
    if not isinstance(token, str) or not token.strip():
        return None
    token = token.strip()
    return token if token.lower().startswith("bearer ") else f"Bearer {token}"


def _str_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InputError(f"field {name!r} must be a string")
    return value.strip()


async def handle_decide(request: web.Request) -> web.Response:
    """``POST /v1/decide`` {method, server, tool or prompt, annotations or hints, arguments,
    token?}."""
    return await run_decision(request, "decide", _parse_decide, _judge_decide)


async def _parse_decide(request: web.Request, asked: Asked) -> tuple[str | None, dict[str, Any]]:
    body = await _json_body(request)
    asked.method = _str_field(body, "method") or "tools/call"
    asked.server = _str_field(body, "server")
    asked.tool = _str_field(body, "tool")
    asked.prompt = _str_field(body, "prompt")
    return _authorization(request, body), body


async def _judge_decide(service: PolicyService, asked: Asked, body: dict[str, Any]) -> Decision:
    if asked.method in LIST_METHODS:
        return await _judge_list(service, asked)
    _check_names(asked)
    if asked.method == "prompts/get":
        allow, reason = await _authorize_prompt(service, asked)
        return Decision(allow, reason)
    annotations = (
        policy_input.normalize_annotations(body.get("annotations"))
        if isinstance(body.get("annotations"), dict)
        else policy_input.parse_annotation_hints(
            body.get("annotation_hints") if isinstance(body.get("annotation_hints"), str) else None
        )
    )
    arguments = policy_input.check_arguments(body["arguments"]) if "arguments" in body else None
    allow, reason = await _authorize_tool(service, asked, annotations, arguments)
    return Decision(allow, reason)


async def _judge_list(service: PolicyService, asked: Asked) -> Decision:
    claims = asked.verified_claims
    extra: dict[str, Any] = {}
    if service.signer is not None:
        # Authorino reads metadata bodies, not response headers: the signed list travels
        # in the body as "headers" so an AuthPolicy can copy it onto the request.
        signed = await service.wristband(claims, asked.token)
        allowed, prompts = signed.allowed, signed.prompts
        extra["headers"] = dict(signed.headers)
    else:
        allowed, _ = await service.listed_tools(claims, asked.token)
        prompts = await service.allowed_prompts(claims)
    reason = (
        f"{asked.method} allowed; {sum(len(v) for v in allowed.values())} tool(s) and "
        f"{sum(len(v) for v in prompts.values())} prompt(s) listed"
    )
    extra["allowed_tools"] = allowed
    extra["allowed_prompts"] = prompts
    return Decision(True, reason, body=extra)


async def handle_filter(request: web.Request) -> web.Response:
    """``POST /v1/filter`` {server, result: {tools: [...]}} (or a JSON-RPC response) + token."""
    return await run_decision(request, "filter", _parse_filter, _judge_filter, _answer_filter)


@dataclass
class _ListResult:
    """The tools/list result to filter, and the request that carried it."""

    request: dict[str, Any]
    result: dict[str, Any]
    tools: list[Any]


async def _parse_filter(request: web.Request, asked: Asked) -> tuple[str | None, _ListResult]:
    asked.method = "tools/list"
    body = await _json_body(request)
    asked.server = policy_input.check_server_name(_str_field(body, "server"))
    inner = body.get("result")
    result: dict[str, Any] = inner if isinstance(inner, dict) else body
    tools = result.get("tools")
    if not isinstance(tools, list):
        raise InputError("expected the tools/list result: {server, result: {tools: [...]}}")
    return _authorization(request, body), _ListResult(body, result, tools)


async def _judge_filter(service: PolicyService, asked: Asked, listed: _ListResult) -> Decision:
    server, tools = asked.server, listed.tools
    catalogue = {server: policy_input.catalogue_from_tools(t for t in tools if isinstance(t, dict))}
    tools_of, _ = await service.listed_tools(asked.verified_claims, asked.token, catalogue)
    allowed = set(tools_of.get(server, []))
    kept = [t for t in tools if isinstance(t, dict) and t.get("name") in allowed]
    reason = f"{len(kept)} of {len(tools)} tool(s) of {server} allowed"
    filtered = {**listed.result, "tools": kept}
    if "jsonrpc" in listed.request:
        body = {"jsonrpc": listed.request["jsonrpc"], "id": listed.request.get("id")}
        return Decision(True, reason, body={**body, "result": filtered})
    return Decision(True, reason, body={"result": filtered})


def _answer_filter(asked: Asked, decision: Decision) -> web.Response:
    if decision.allow:
        return answer_json(asked, decision)
    return answer(decision.status, False, decision.reason, decision.headers, result={"tools": []})


# ----------------------------------------------------------------------------------------------
# the wristband's public key
# ----------------------------------------------------------------------------------------------
async def handle_jwks(request: web.Request) -> web.Response:
    signer = service_of(request.app).signer
    return web.json_response(signer.jwks() if signer else {"keys": []})


async def handle_public_key(request: web.Request) -> web.Response:
    signer = service_of(request.app).signer
    if signer is None:
        return answer(404, False, "no wristband signing key is configured")
    return web.Response(text=signer.public_key_pem, content_type="application/x-pem-file")
