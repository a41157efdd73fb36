"""The policy service's HTTP shell (aiohttp): ext_authz check, JSON APIs, JWKS.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway_plugins.common.caller_auth import CallerAuthenticator, protect
from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import InvalidToken, JWTValidator, ValidationUnavailable
from gateway_plugins.common.service import (
    SERVER_SSL,
    SERVICE_METRICS,
    add_ready_check,
    create_base_app,
)
from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy.config import SERVICE, PolicySettings
from gateway_plugins.policy.decision_log import DecisionLog
from gateway_plugins.policy.engine_guard import verify_embedded
from gateway_plugins.policy.engines import (
    DecisionEngine,
    EngineUnavailable,
    OpaOptions,
    PolicyError,
    PolicySource,
    create_engine,
)
from gateway_plugins.policy.input import Catalogue, HeaderMismatch, InputError
from gateway_plugins.policy.live_engine import LiveEngine
from gateway_plugins.policy.rbac_list import RbacListFilter, RbacMetrics, user_key
from gateway_plugins.policy.reloader import (
    AwaitingPolicy,
    PolicyReloader,
    ReloadMetrics,
    load_file_source,
    make_poller,
    reloading_enabled,
)
from gateway_plugins.policy.wristband import (
    SignedList,
    WristbandSigner,
    compact_json,
    load_signing_key,
)
from kmg_common import tracing as kt
from kmg_common.bearer import bearer_token
from kmg_common.host_origin import service_rule
from kmg_common.logging import trace_id_var

log = logging.getLogger(__name__)

H_METHOD = "x-mcp-method"
H_SERVER = "x-mcp-servername"
H_TOOL = "x-mcp-toolname"
H_HINTS = "x-mcp-annotation-hints"
H_PROMPT = "x-mcp-promptname"
H_PARTIAL_BODY = "x-envoy-auth-partial-body"

_WRISTBAND_CACHE_SIZE = 10_000
LIST_METHODS = frozenset({"tools/list", "prompts/list"})  # answered with the signed header(s)
NAMED_METHODS = frozenset({"tools/call", "prompts/get"})  # decided per tool / per prompt
# JSON-RPC error code of a request the gateway's policy refused (implementation-defined range).
POLICY_DENIED_CODE = -32003


class Refusal(Exception):
    """A request answered with ``allow: false`` before or instead of a policy decision."""

    def __init__(self, status: int, reason: str, *, error: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error


@dataclass
class _Metrics:
    decisions: Counter
    engine_seconds: Histogram


@dataclass
class PolicyService:
    """The pure-ish core the routes call: token → claims → input → engine → answer."""

    settings: PolicySettings
    engine: DecisionEngine
    validator: JWTValidator
    signer: WristbandSigner | None
    decisions: DecisionLog
    catalogue: Catalogue | None
    metrics: _Metrics
    rbac: RbacListFilter | None = None
    _wristbands: OrderedDict[str, tuple[float, SignedList]] = field(default_factory=OrderedDict)
    _policy_generation: int = 0

    def policy_changed(self, source: PolicySource) -> None:
        """A reload put ``source`` in force: nothing computed from the old policy is reused."""
        self._policy_generation += 1
        self._wristbands.clear()
        if self.rbac is not None:
            self.rbac.clear()
        self.catalogue = source.catalogue

    # -- tokens --------------------------------------------------------------------------------
    async def claims_of(self, authorization: str | None) -> dict[str, Any]:
        """Verified claims of the bearer token, on every request.

        No cache of its own: the validator remembers verified tokens for at most
        ``auth.verified_cache_ttl_s`` (never past ``exp``) and re-checks ``exp``/``nbf`` on every
        reuse, so a token is never trusted longer than the validator would trust it.
        """
        token = bearer_token(authorization)
        if token is None:
            raise Refusal(
                401,
                "no bearer token: send Authorization: Bearer <access token>",
                error="unauthenticated",
            )
        try:
            return await self.validator.validate(token)
        except InvalidToken as exc:
            raise Refusal(401, f"token refused: {exc.reason}", error="invalid_token") from None
        except ValidationUnavailable as exc:
            raise Refusal(
                503, f"cannot verify the token now: {exc}", error="validation_unavailable"
            ) from None

    # -- decisions -----------------------------------------------------------------------------
    async def decide(
        self,
        *,
        method: str,
        server: str,
        tool: str,
        annotations: policy_input.Annotations,
        claims: Mapping[str, Any],
        arguments: Mapping[str, Any] | None,
        prompt: str = "",
    ) -> tuple[bool, str]:
        # The catalogue (the servers' own tools/list) wins over what the request says about the
        # tool: a hint is only used for a tool the catalogue does not know.
        known = policy_input.catalogue_annotations(self.catalogue, server, tool)
        if known is not None:
            annotations = known
        doc = policy_input.call_input(
            method=method,
            server=server,
            tool=tool,
            annotations=annotations,
            claims=claims,
            arguments=arguments,
            prompt=prompt,
        )
        started = time.perf_counter()
        try:
            decision = await self.engine.decide(doc)
        except EngineUnavailable as exc:
            raise Refusal(
                503, f"policy engine unavailable, denying: {exc}", error="engine_unavailable"
            ) from None
        except PolicyError as exc:
            raise Refusal(500, f"policy error, denying: {exc}", error="policy_error") from None
        finally:
            self.metrics.engine_seconds.labels("decision").observe(time.perf_counter() - started)
        return decision.allow, decision.reason

    async def allowed_tools(
        self, claims: Mapping[str, Any], catalogue: Catalogue | None
    ) -> dict[str, list[str]]:
        doc = policy_input.list_input(claims, catalogue)
        started = time.perf_counter()
        try:
            return await self.engine.allowed_tools(doc)
        except EngineUnavailable as exc:
            raise Refusal(
                503, f"policy engine unavailable, denying: {exc}", error="engine_unavailable"
            ) from None
        except PolicyError as exc:
            raise Refusal(500, f"policy error, denying: {exc}", error="policy_error") from None
        finally:
            self.metrics.engine_seconds.labels("allowed_tools").observe(
                time.perf_counter() - started
            )

    async def allowed_prompts(self, claims: Mapping[str, Any]) -> dict[str, list[str]]:
        doc = policy_input.list_input(claims, None)
        started = time.perf_counter()
        try:
            return await self.engine.allowed_prompts(doc)
        except EngineUnavailable as exc:
            raise Refusal(
                503, f"policy engine unavailable, denying: {exc}", error="engine_unavailable"
            ) from None
        except PolicyError as exc:
            raise Refusal(500, f"policy error, denying: {exc}", error="policy_error") from None
        finally:
            self.metrics.engine_seconds.labels("allowed_prompts").observe(
                time.perf_counter() - started
            )

    async def listed_tools(
        self,
        claims: Mapping[str, Any],
        token: str | None,
        catalogue: Catalogue | None = None,
    ) -> tuple[dict[str, list[str]], bool]:
        """The tools tools/list shows: the roles' tools, narrowed by the cluster's RBAC for the
        user's own token when ``rbac_list`` is on; True when some server fell back to its
        role-derived list (a failed review: fail soft, see :mod:`.rbac_list`)."""
        allowed = await self.allowed_tools(claims, catalogue)
        if self.rbac is None:
            return allowed, False
        filtered = await self.rbac.filter(allowed, token, user_key(claims))
        return filtered.allowed, filtered.degraded

    async def wristband(self, claims: Mapping[str, Any], token: str | None = None) -> SignedList:
        """The signed list for these claims, reused while fresh (same claims ⇒ same list)."""
        assert self.signer is not None
        ttl = min(self.settings.wristband.cache_ttl_s, self.signer.lifetime_s / 2)
        if self.rbac is not None:
            ttl = min(ttl, self.rbac.ttl_s)
        key = hashlib.sha256(compact_json(policy_input.policy_claims(claims)).encode()).hexdigest()
        now = time.time()
        cached = self._wristbands.get(key)
        if cached is not None and now - cached[0] < ttl:
            self._wristbands.move_to_end(key)
            return cached[1]
        # The engine uses data.mcp.catalogue (loaded at start), not a per-request copy.
        generation = self._policy_generation
        allowed, degraded = await self.listed_tools(claims, token)
        prompts = await self.allowed_prompts(claims)
        signed = self.signer.sign(allowed, prompts=prompts, subject=_subject(claims))
        # not from a replaced policy, nor a role-only list standing in for a failed review
        if ttl > 0 and generation == self._policy_generation and not degraded:
            self._wristbands[key] = (now, signed)
            while len(self._wristbands) > _WRISTBAND_CACHE_SIZE:
                self._wristbands.popitem(last=False)
        return signed

    def record(
        self,
        *,
        claims: Mapping[str, Any] | None,
        method: str,
        server: str | None,
        tool: str | None,
        allow: bool,
        reason: str,
        status: int,
        started: float,
        endpoint: str,
        prompt: str | None = None,
    ) -> None:
        decision = "allow" if allow else "deny"
        self.metrics.decisions.labels(endpoint, decision).inc()
        trace_id = trace_id_var.get()
        extra = {
            "endpoint": endpoint,
            **({"prompt": prompt} if prompt else {}),
            **({"trace_id": trace_id} if trace_id else {}),
        }
        kt.annotate(
            {
                kt.USER: kt.subject_name(claims),
                kt.MCP_METHOD: method,
                kt.MCP_SERVER: server,
                kt.TOOL_NAME: tool,
                kt.DECISION: decision,
                kt.OUTCOME: str(status),
            }
        )
        self.decisions.record(
            user=policy_input.display_name(claims or {}),
            subject=_subject(claims or {}),
            method=method,
            server=server,
            tool=tool,
            allow=allow,
            reason=reason,
            engine=self.engine.name,
            status=status,
            duration_ms=(time.perf_counter() - started) * 1000,
            extra=extra,
        )


def _subject(claims: Mapping[str, Any]) -> str | None:
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


@dataclass
class _Slot:
    """Holds the service, created once the event loop runs (it owns an HTTP session)."""

    service: PolicyService | None = None
    reloader: PolicyReloader | None = None


_SLOT = web.AppKey("policy_service", _Slot)


def service_of(app: web.Application) -> PolicyService:
    service = app[_SLOT].service
    if service is None:
        raise web.HTTPServiceUnavailable(reason="policy service is starting")
    return service


def reloader_of(app: web.Application) -> PolicyReloader | None:
    """The app's policy reloader (None when it does not reload, or before it starts)."""
    return app[_SLOT].reloader


def _answer(
    status: int,
    allow: bool,
    reason: str,
    response_headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A JSON answer that always says ``allow`` explicitly; ``extra`` adds body fields."""
    body: dict[str, Any] = {"allow": allow, "reason": reason, **extra}
    return web.json_response(body, status=status, headers=dict(response_headers or {}))


def _refusal(exc: Refusal | HeaderMismatch | InputError) -> tuple[int, str]:
    """The status and reason of a request refused before or instead of a policy decision."""
    if isinstance(exc, Refusal):
        return exc.status, exc.reason
    if isinstance(exc, HeaderMismatch):
        return 403, f"denied: {exc}"
    return 400, f"bad request: {exc}"


def _unauthenticated_headers(settings: PolicySettings, status: int) -> dict[str, str]:
    if status != 401:
        return {}
    url = settings.auth.resource_metadata_url
    return {"WWW-Authenticate": f'Bearer resource_metadata="{url}"' if url else "Bearer"}


# ----------------------------------------------------------------------------------------------
# ext_authz check
# ----------------------------------------------------------------------------------------------
async def check(request: web.Request) -> web.Response:
    service = service_of(request.app)
    started = time.perf_counter()
    method = request.headers.get(H_METHOD, "").strip()
    server = request.headers.get(H_SERVER, "").strip()
    tool = request.headers.get(H_TOOL, "").strip()
    prompt = request.headers.get(H_PROMPT, "").strip()
    claims: dict[str, Any] | None = None
    body: policy_input.RequestBody | None = None
    try:
        claims = await service.claims_of(request.headers.get("Authorization"))
        body = await _read_body(request, method)
        method, tool, prompt = _reconcile(method, tool, prompt, body)
        if method in LIST_METHODS:
            token = bearer_token(request.headers.get("Authorization"))
            return await _check_list(service, claims, token, started, server, method)
        names_tool = bool(tool) and server != policy_input.BROKER_SERVER
        if method not in NAMED_METHODS and not names_tool:
            reason = f"method {method or '(none)'} names no tool: no tool decision needed"
            service.record(
                claims=claims,
                method=method,
                server=server or None,
                tool=None,
                allow=True,
                reason=reason,
                status=200,
                started=started,
                endpoint="check",
            )
            return _answer(200, True, reason)
        if server:
            policy_input.check_server_name(server)
        if method == "prompts/get":
            if prompt:
                policy_input.check_prompt_name(prompt)
            allow, reason = await service.decide(
                method=method,
                server=server,
                tool="",
                annotations={},
                claims=claims,
                arguments=None,
                prompt=prompt,
            )
        else:
            if tool:
                policy_input.check_tool_name(tool)
            allow, reason = await service.decide(
                method=method or "tools/call",
                server=server,
                tool=tool,
                annotations=policy_input.parse_annotation_hints(request.headers.get(H_HINTS)),
                claims=claims,
                arguments=body.arguments if body is not None else None,
            )
        status = 200 if allow else 403
    except (Refusal, HeaderMismatch, InputError) as exc:
        allow, (status, reason) = False, _refusal(exc)
    service.record(
        claims=claims,
        method=method,
        server=server or None,
        tool=tool or None,
        allow=allow,
        reason=reason,
        status=status,
        started=started,
        endpoint="check",
        prompt=prompt or None,
    )
    headers = _unauthenticated_headers(service.settings, status)
    if status == 403 and body is not None and body.request_id is not None:
        return _jsonrpc_denial(reason, body.request_id, headers)
    return _answer(status, allow, reason, headers)


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


async def _read_body(request: web.Request, method: str) -> policy_input.RequestBody | None:
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
    return policy_input.parse_request_body(raw)


def _reconcile(
    method: str, tool: str, prompt: str, body: policy_input.RequestBody | None
) -> tuple[str, str, str]:
    """The method, tool and prompt to decide on: the headers, which must describe the body.

    No body: the headers decide, as they always did. A whole body: its method (and, for
    ``tools/call`` / ``prompts/get``, its ``params.name``) must match ``x-mcp-method`` /
    ``x-mcp-toolname`` / ``x-mcp-promptname``; a missing header takes the body's value.
    """
    if body is None:
        return method, tool, prompt
    method, tool = policy_input.reconcile(method, tool, body)
    return method, tool, policy_input.reconcile_prompt(prompt, body)


async def _check_list(
    service: PolicyService,
    claims: dict[str, Any],
    token: str | None,
    started: float,
    server: str,
    method: str,
) -> web.Response:
    headers: Mapping[str, str] = {}
    extra: dict[str, Any] = {}
    if service.signer is None:
        reason = f"{method} allowed; no signed list (wristband.signing_key_file is not set)"
    else:
        signed = await service.wristband(claims, token)
        count = sum(len(v) for v in signed.allowed.values())
        prompts = sum(len(v) for v in signed.prompts.values())
        reason = (
            f"{method} allowed; signed list of {count} tool(s) and {prompts} prompt(s) on "
            f"{len(signed.allowed)} server(s)"
        )
        headers = signed.headers
        extra = {"allowed_tools": signed.allowed, "allowed_prompts": signed.prompts}
    service.record(
        claims=claims,
        method=method,
        server=server or None,
        tool=None,
        allow=True,
        reason=reason,
        status=200,
        started=started,
        endpoint="check",
    )
    return _answer(200, True, reason, headers, **extra)


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


async def decide(request: web.Request) -> web.Response:
    """``POST /v1/decide`` {method, server, tool or prompt, annotations or hints, arguments,
    token?}."""
    service = service_of(request.app)
    started = time.perf_counter()
    claims: dict[str, Any] | None = None
    method = server = tool = prompt = ""
    extra: dict[str, Any] = {}
    try:
        body = await _json_body(request)
        method = _str_field(body, "method") or "tools/call"
        server = _str_field(body, "server")
        tool = _str_field(body, "tool")
        prompt = _str_field(body, "prompt")
        authorization = _authorization(request, body)
        claims = await service.claims_of(authorization)
        if method in LIST_METHODS:
            token = bearer_token(authorization)
            if service.signer is not None:
                # Authorino reads metadata bodies, not response headers: the signed list travels
                # in the body as "headers" so an AuthPolicy can copy it onto the request.
                signed = await service.wristband(claims, token)
                allowed, prompts = signed.allowed, signed.prompts
                extra["headers"] = dict(signed.headers)
            else:
                allowed, _ = await service.listed_tools(claims, token)
                prompts = await service.allowed_prompts(claims)
            allow, reason = (
                True,
                f"{method} allowed; {sum(len(v) for v in allowed.values())} tool(s) and "
                f"{sum(len(v) for v in prompts.values())} prompt(s) listed",
            )
            extra["allowed_tools"] = allowed
            extra["allowed_prompts"] = prompts
        elif method == "prompts/get":
            if server:
                policy_input.check_server_name(server)
            if prompt:
                policy_input.check_prompt_name(prompt)
            allow, reason = await service.decide(
                method=method,
                server=server,
                tool="",
                annotations={},
                claims=claims,
                arguments=None,
                prompt=prompt,
            )
        else:
            if server:
                policy_input.check_server_name(server)
            if tool:
                policy_input.check_tool_name(tool)
            annotations = (
                policy_input.normalize_annotations(body.get("annotations"))
                if isinstance(body.get("annotations"), dict)
                else policy_input.parse_annotation_hints(
                    body.get("annotation_hints")
                    if isinstance(body.get("annotation_hints"), str)
                    else None
                )
            )
            arguments = (
                policy_input.check_arguments(body["arguments"]) if "arguments" in body else None
            )
            allow, reason = await service.decide(
                method=method,
                server=server,
                tool=tool,
                annotations=annotations,
                claims=claims,
                arguments=arguments,
            )
        status = 200
    except (Refusal, InputError) as exc:
        allow, (status, reason) = False, _refusal(exc)
    service.record(
        claims=claims,
        method=method,
        server=server or None,
        tool=tool or None,
        allow=allow,
        reason=reason,
        status=status,
        started=started,
        endpoint="decide",
        prompt=prompt or None,
    )
    return _answer(
        status, allow, reason, _unauthenticated_headers(service.settings, status), **extra
    )


async def filter_tools(request: web.Request) -> web.Response:
    """``POST /v1/filter`` {server, result: {tools: [...]}} (or a JSON-RPC response) + token."""
    service = service_of(request.app)
    started = time.perf_counter()
    claims: dict[str, Any] | None = None
    server = ""
    try:
        body = await _json_body(request)
        server = policy_input.check_server_name(_str_field(body, "server"))
        inner = body.get("result")
        result: dict[str, Any] = inner if isinstance(inner, dict) else body
        tools = result.get("tools")
        if not isinstance(tools, list):
            raise InputError("expected the tools/list result: {server, result: {tools: [...]}}")
        authorization = _authorization(request, body)
        claims = await service.claims_of(authorization)
        catalogue = {
            server: policy_input.catalogue_from_tools(t for t in tools if isinstance(t, dict))
        }
        listed, _ = await service.listed_tools(claims, bearer_token(authorization), catalogue)
        allowed = set(listed.get(server, []))
        kept = [t for t in tools if isinstance(t, dict) and t.get("name") in allowed]
        reason = f"{len(kept)} of {len(tools)} tool(s) of {server} allowed"
        service.record(
            claims=claims,
            method="tools/list",
            server=server,
            tool=None,
            allow=True,
            reason=reason,
            status=200,
            started=started,
            endpoint="filter",
        )
        filtered = {**result, "tools": kept}
        payload: dict[str, Any] = {"allow": True, "reason": reason}
        if "jsonrpc" in body:
            payload.update({"jsonrpc": body["jsonrpc"], "id": body.get("id"), "result": filtered})
        else:
            payload["result"] = filtered
        return web.json_response(payload)
    except (Refusal, InputError) as exc:
        allow, (status, reason) = False, _refusal(exc)
    service.record(
        claims=claims,
        method="tools/list",
        server=server or None,
        tool=None,
        allow=allow,
        reason=reason,
        status=status,
        started=started,
        endpoint="filter",
    )
    return _answer(
        status,
        allow,
        reason,
        _unauthenticated_headers(service.settings, status),
        result={"tools": []},
    )


async def jwks(request: web.Request) -> web.Response:
    signer = service_of(request.app).signer
    return web.json_response(signer.jwks() if signer else {"keys": []})


async def public_key(request: web.Request) -> web.Response:
    signer = service_of(request.app).signer
    if signer is None:
        return _answer(404, False, "no wristband signing key is configured")
    return web.Response(text=signer.public_key_pem, content_type="application/x-pem-file")


# ----------------------------------------------------------------------------------------------
# assembly
# ----------------------------------------------------------------------------------------------
def load_catalogue_file(path: Path | None) -> Catalogue | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read catalogue file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"catalogue file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"catalogue file {path} must hold {{server: [tool, ...]}}")
    return policy_input.load_catalogue(doc)


def build_source(settings: PolicySettings) -> PolicySource:
    """The policy files (a mounted ConfigMap read at one version: see :mod:`.reloader`)."""
    return load_file_source(settings, load_catalogue_file)


def build_engine(settings: PolicySettings, source: PolicySource) -> DecisionEngine:
    """The configured engine; the embedded one only after it proved to decide like OPA
    (:mod:`gateway_plugins.policy.engine_guard`), else :class:`PolicySourceError`."""
    if settings.engine == "embedded":
        checked = verify_embedded(source, settings.policies_dir, settings.embedded_verify)
        log.info("embedded engine verified: %s", checked.summary())
    token = None
    if settings.opa.token_file is not None:
        token = settings.opa.token_file.read_text(encoding="utf-8").strip()
    options = OpaOptions(
        url=settings.opa.url,
        timeout_s=settings.opa.timeout_s,
        load_policies=settings.opa.load_policies,
        token=token,
        ca_file=settings.opa.ca_file,
    )
    return create_engine(settings.engine, source, options, cache_size=settings.decision_cache_size)


@dataclass
class _Reloading:
    """The reloader's background task and the bundle service's connection pool."""

    task: asyncio.Task[None]
    session: aiohttp.ClientSession | None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.session is not None:
            await self.session.close()


async def _start_reloader(
    app: web.Application,
    settings: PolicySettings,
    live: LiveEngine,
    service: PolicyService,
    source: PolicySource | None,
    metrics: ReloadMetrics,
) -> _Reloading:
    session = None
    if settings.bundle.url is not None:
        session = make_client_session(
            ca_file=settings.bundle.ca_file, timeout_s=settings.bundle.timeout_s
        )
    reloader = PolicyReloader(
        settings,
        live,
        build=lambda new: build_engine(settings, new),
        read_catalogue=load_catalogue_file,
        on_change=service.policy_changed,
        metrics=metrics,
        active=source,
        poller=make_poller(settings, session) if session is not None else None,
    )
    app[_SLOT].reloader = reloader
    if source is None:
        await reloader.check()  # the first bundle before serving (decisions 503 until then)
    return _Reloading(asyncio.create_task(reloader.run()), session)


TRACING_NAME = "mcp-policy"  # service.name of its spans unless tracing.service_name


def create_app(
    settings: PolicySettings,
    *,
    engine: DecisionEngine | None = None,
    decision_log: DecisionLog | None = None,
) -> web.Application:
    """The service; ``engine`` may be passed in (tests share one; it is never reloaded),
    otherwise built from settings and kept current by a :class:`PolicyReloader`."""
    # bundle.url: the policy comes from the bundle service once the service runs
    source = build_source(settings) if settings.bundle.url is None else None
    signer = None
    if settings.wristband.signing_key_file is not None:
        signer = WristbandSigner(
            load_signing_key(settings.wristband.signing_key_file),
            issuer=settings.wristband.issuer,
            lifetime_s=settings.wristband.lifetime_s,
            form=settings.wristband.form,
            key_id=settings.wristband.key_id,
        )
    caller = CallerAuthenticator(settings.caller_auth)
    owns_engine = engine is None
    the_engine: DecisionEngine
    live: LiveEngine | None = None
    if engine is not None:
        the_engine = engine
    else:
        first = (
            build_engine(settings, source)
            if source is not None
            else AwaitingPolicy(settings.engine, str(settings.bundle.url))
        )
        the_engine = live = LiveEngine(first)
    # The ext_authz check carries the original request's Host (Envoy's); the rest is checked.
    tracer = kt.start_tracing(settings.tracing, TRACING_NAME)
    app = create_base_app(
        SERVICE,
        client_max_size=settings.max_body_bytes,
        host_origin=service_rule(settings),
        unchecked_prefixes=("/check",),
        tracing=tracer,
    )
    server_ssl = caller.server_ssl_context()
    if server_ssl is not None:
        app[SERVER_SSL] = server_ssl
    registry = app[SERVICE_METRICS].registry
    metrics = _Metrics(
        Counter(
            "policy_decisions_total",
            "Decisions, by endpoint and outcome.",
            ["endpoint", "decision"],
            registry=registry,
        ),
        Histogram(
            "policy_engine_seconds",
            "Time in the decision engine, by entrypoint.",
            ["entrypoint"],
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        ),
    )
    reload_metrics = ReloadMetrics.register(registry)
    rbac_metrics = RbacMetrics.register(registry)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = make_client_session(ca_file=settings.auth.ca_file, timeout_s=5.0)
        jwks_cache = JWKSCache(
            session, min_refetch_interval_s=settings.auth.jwks_min_refetch_interval_s
        )
        validator = JWTValidator(
            settings.auth.issuers,
            jwks_cache,
            algorithms=settings.auth.algorithms,
            leeway_s=settings.auth.leeway_s,
            verified_cache_ttl_s=settings.auth.verified_cache_ttl_s,
        )
        log_sink = (
            decision_log
            if decision_log is not None
            else DecisionLog(settings.decision_log, enabled=settings.decision_log is not None)
        )
        service = PolicyService(
            settings,
            the_engine,
            validator,
            signer,
            log_sink,
            source.catalogue if source is not None else None,
            metrics,
        )
        if settings.rbac_list.enabled:
            service.rbac = RbacListFilter(settings.rbac_list, rbac_metrics)
            await service.rbac.start()
        app[_SLOT].service = service
        if owns_engine:
            await the_engine.start()
        reloading = None
        if live is not None and reloading_enabled(settings):
            reloading = await _start_reloader(app, settings, live, service, source, reload_metrics)

        async def engine_ready() -> None:
            await the_engine.check_ready()

        async def issuer_keys() -> None:
            for issuer in validator.issuers:
                await jwks_cache.ensure_loaded(issuer)

        add_ready_check(app, "engine", engine_ready)
        add_ready_check(app, "issuer_keys", issuer_keys)
        try:
            yield
        finally:
            if reloading is not None:
                await reloading.stop()
            if owns_engine:
                await the_engine.close()
            if decision_log is None:
                log_sink.close()
            if service.rbac is not None:
                await service.rbac.close()
            await session.close()
            app[_SLOT].service = None

    app[_SLOT] = _Slot()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("*", "/check", protect(check, caller))
    app.router.add_route("*", "/check/{tail:.*}", protect(check, caller))
    app.router.add_post("/v1/decide", protect(decide, caller))
    app.router.add_post("/v1/filter", protect(filter_tools, caller))
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/v1/wristband/public-key", public_key)
    return app
