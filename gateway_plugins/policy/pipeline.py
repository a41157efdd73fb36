"""The one decision pipeline every decision route runs: parse → claims → judge → record → answer.

A route supplies three steps: ``parse`` reads the request into :class:`Asked` and returns the
``Authorization`` value to verify; ``judge`` turns the verified request into a :class:`Decision`;
``answer`` renders it. The pipeline verifies the token, turns every refusal (no or bad token,
bad input, engine down) into a ``allow: false`` decision with its status, and records each
decision exactly once (:meth:`PolicyService.record`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.input import InputError
from gateway_plugins.policy.request_body import HeaderMismatch
from gateway_plugins.policy.service import PolicyService, Refusal, service_of
from kmg_common.bearer import bearer_token

_P = TypeVar("_P")


@dataclass
class Asked:
    """What a request asked, as far as it was read; the decision log records these fields."""

    endpoint: str
    started: float
    method: str = ""
    server: str = ""
    tool: str = ""
    prompt: str = ""
    claims: dict[str, Any] | None = None
    token: str | None = None
    request_id: str | int | None = None  # the JSON-RPC request's id, when its body came along

    @property
    def verified_claims(self) -> dict[str, Any]:
        """The token's claims; only asked for after the pipeline verified the token."""
        assert self.claims is not None
        return self.claims


@dataclass
class Decision:
    """A route's answer: ``allow`` and ``reason`` always; ``body`` adds answer fields."""

    allow: bool
    reason: str
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


Parse = Callable[[web.Request, Asked], Awaitable[tuple[str | None, _P]]]
Judge = Callable[[PolicyService, Asked, _P], Awaitable[Decision]]
Answer = Callable[[Asked, Decision], web.Response]


def answer_json(asked: Asked, decision: Decision) -> web.Response:
    """A JSON answer that always says ``allow`` explicitly; ``decision.body`` adds fields."""
    return answer(
        decision.status, decision.allow, decision.reason, decision.headers, **decision.body
    )


def answer(
    status: int,
    allow: bool,
    reason: str,
    response_headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A JSON answer that always says ``allow`` explicitly; ``extra`` adds body fields."""
    body: dict[str, Any] = {"allow": allow, "reason": reason, **extra}
    return web.json_response(body, status=status, headers=dict(response_headers or {}))


async def run_decision(
    request: web.Request,
    endpoint: str,
    parse: Parse[_P],
    judge: Judge[_P],
    render: Answer = answer_json,
) -> web.Response:
    """Parse, verify the token, judge, record once, answer."""
    service = service_of(request.app)
    asked = Asked(endpoint=endpoint, started=time.perf_counter())
    try:
        authorization, parsed = await parse(request, asked)
        asked.claims = await service.claims_of(authorization)
        asked.token = bearer_token(authorization)
        decision = await judge(service, asked, parsed)
    except (Refusal, HeaderMismatch, InputError) as exc:
        decision = refused(exc, service.settings)
    service.record(
        claims=asked.claims,
        method=asked.method,
        server=asked.server or None,
        tool=asked.tool or None,
        allow=decision.allow,
        reason=decision.reason,
        status=decision.status,
        started=asked.started,
        endpoint=asked.endpoint,
        prompt=asked.prompt or None,
    )
    return render(asked, decision)


def refused(exc: Refusal | HeaderMismatch | InputError, settings: PolicySettings) -> Decision:
    """The decision on a request refused before or instead of a policy decision."""
    if isinstance(exc, Refusal):
        status, reason = exc.status, exc.reason
    elif isinstance(exc, HeaderMismatch):
        status, reason = 403, f"denied: {exc}"
    else:
        status, reason = 400, f"bad request: {exc}"
    return Decision(False, reason, status, headers=_unauthenticated_headers(settings, status))


def _unauthenticated_headers(settings: PolicySettings, status: int) -> dict[str, str]:
    if status != 401:
        return {}
    url = settings.auth.resource_metadata_url
    return {"WWW-Authenticate": f'Bearer resource_metadata="{url}"' if url else "Bearer"}
