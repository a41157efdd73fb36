"""The token exchange service's HTTP routes.

- ``/check`` (any method, any sub-path: Envoy's ``path_prefix``): Envoy ext_authz HTTP check.
  200 + ``authorization: Bearer <token for x-mcp-servername>``; 401 + ``WWW-Authenticate``;
  403 ``{"allow": false, "reason"}``; 503 when Keycloak or the JWKS cannot be reached.
- ``/ext-authz/combined`` (any method, any sub-path): the same check, then the policy service's
  ext_authz check (``ext_authz.policy_url``) with the exchanged token, in one round trip, for
  gateways with a single ext_authz provider (Istio < 1.30). 200 + ``authorization`` + the policy's
  signed tool-list headers; 401/403/503 as ``/check``; the policy's 403; 503 when the policy
  service cannot answer or ``policy_url`` is unset (fail closed).
- ``POST /token``: RFC 8693 token endpoint facade (form-encoded, HTTP Basic client auth), the
  request shape Keycloak takes, answered from the cache when possible (:mod:`.facade`). A foreign
  ``Host`` (421) or ``Origin`` (403) is refused first (``kmg_common/host_origin.py``: DNS
  rebinding protection).

``/check`` and ``/ext-authz/*`` answer only the gateway (``caller_auth``: a shared secret header or
an mTLS client certificate; 403 ``caller_unauthenticated`` otherwise), accept only tokens addressed
to the gateway (``ext_authz.audiences``) and issue tokens only for the targets the gateway routes
(``ext_authz.targets``); other targets (a cross-domain cluster) only come from ``/token``. Both
checks run the one pipeline of :mod:`.pipeline`.
"""

from __future__ import annotations

from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator, protect
from gateway_plugins.common.middlewares import request_id_of
from gateway_plugins.token_exchange.facade import handle_token_request
from gateway_plugins.token_exchange.pipeline import allow, deny, run_check
from gateway_plugins.token_exchange.service import RUNTIME

COMBINED_PREFIX = "/ext-authz/combined"


def add_routes(app: web.Application, caller: CallerAuthenticator, *, facade: bool) -> None:
    """The checks (behind the caller credential) and, with ``facade``, ``POST /token``."""
    app.router.add_route("*", "/check{tail:.*}", protect(check, caller))
    app.router.add_route("*", COMBINED_PREFIX, protect(combined_check, caller))
    app.router.add_route("*", COMBINED_PREFIX + "/{tail:.*}", protect(combined_check, caller))
    if facade:
        app.router.add_post("/token", token_endpoint)


async def check(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    granted = await run_check(request, runtime, runtime.require())
    if isinstance(granted, web.Response):
        return granted
    return allow(granted, {}, {})


def _original_path(request: web.Request) -> str:
    """What Envoy appended to ``/ext-authz/combined`` (still URL-encoded, with its query)."""
    raw = request.raw_path
    return raw[len(COMBINED_PREFIX) :] if raw.startswith(COMBINED_PREFIX + "/") else ""


async def combined_check(request: web.Request) -> web.Response:
    """Exchange as ``/check`` does, then ask the policy service with the exchanged token."""
    runtime = request.app[RUNTIME]
    if runtime.settings.ext_authz.policy_url is None:
        runtime.metrics.policy_calls.labels("not_configured").inc()
        return deny(
            503,
            "not_configured",
            "combined check needs ext_authz.policy_url (the policy service's ext_authz check "
            "endpoint, e.g. http://policy:8080/check); denying",
        )
    exchanger = runtime.require()
    policy = runtime.policy
    if policy is None:
        raise web.HTTPServiceUnavailable(reason="Starting")
    granted = await run_check(request, runtime, exchanger)
    if isinstance(granted, web.Response):
        return granted
    body = await request.read() if request.can_read_body else None
    answer = await policy.check(
        token=granted.token or granted.subject_token,
        path=_original_path(request),
        headers=request.headers,
        body=body,
        request_id=request_id_of(request) or None,
    )
    if not answer.allow:
        return deny(answer.status, answer.error or "policy_denied", answer.reason)
    return allow(granted, {"reason": answer.reason}, dict(answer.headers))


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /token``: the RFC 8693 facade, clients checked against ``facade.clients``."""
    runtime = request.app[RUNTIME]
    return await handle_token_request(request, runtime.require(), runtime.client_ok)
