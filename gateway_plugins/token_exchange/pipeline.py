"""The one check pipeline of the ext_authz routes (``/check`` and ``/ext-authz/combined``).

bearer token → validate → addressed to the gateway? → routable target? → exchange → a
:class:`Granted`, or the 401/403/503 answer to give, counted once (:func:`refuse`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway_plugins.common.jwt_validation import InvalidToken, ValidationUnavailable
from gateway_plugins.token_exchange.config import Settings
from gateway_plugins.token_exchange.exchanger import Exchanger, ExchangeRefused, audiences_of
from gateway_plugins.token_exchange.service import Runtime
from gateway_plugins.token_exchange.sts_client import STSUnavailable
from gateway_plugins.token_exchange.targets import UnknownTarget
from kmg_common import tracing as kt
from kmg_common.bearer import bearer_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Granted:
    """A validated caller and the token its target gets (None: pass the caller's token on)."""

    subject_token: str
    token: str | None
    exchanged: bool


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def unauthorized(
    request: web.Request, settings: Settings, reason: str, *, error: bool
) -> web.Response:
    metadata = settings.ext_authz.resource_metadata_url or (
        f"https://{request.host}/.well-known/oauth-protected-resource"
    )
    challenge = f'Bearer resource_metadata="{_quote(metadata)}"'
    if error:
        challenge += f', error="invalid_token", error_description="{_quote(reason)}"'
    kt.annotate({kt.OUTCOME: "unauthenticated", kt.DECISION: "deny"})
    return web.json_response(
        {"allow": False, "error": "unauthenticated", "reason": reason},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )


def deny(status: int, error: str, reason: str) -> web.Response:
    kt.annotate({kt.OUTCOME: error, kt.DECISION: "deny"})
    if status >= 500:
        kt.mark_error(error)
    return web.json_response({"allow": False, "error": error, "reason": reason}, status=status)


def refuse(
    runtime: Runtime, target: str, outcome: str, status: int, error: str, reason: str
) -> web.Response:
    """Count the refusal for ``target`` (a metric label) and answer it."""
    runtime.metrics.count(target, outcome)
    return deny(status, error, reason)


def allow(granted: Granted, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    """The 200 of a check: the exchanged token (if any) as ``authorization`` beside ``headers``."""
    if granted.token is not None:
        headers = {**headers, "authorization": f"Bearer {granted.token}"}
    return web.json_response(
        {"allow": True, "exchanged": granted.exchanged, **body}, headers=headers
    )


def _label(exchanger: Exchanger, target: str) -> str:
    """Metric label for a caller-supplied target: configured names only (bounded cardinality)."""
    return target if target in exchanger.targets else "-"


async def run_check(
    request: web.Request, runtime: Runtime, exchanger: Exchanger
) -> Granted | web.Response:
    """The ext_authz exchange shared by ``/check`` and ``/ext-authz/combined``: a grant, or the
    401/403/503 answer to give."""
    settings = runtime.settings
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        return unauthorized(request, settings, "no bearer token", error=False)
    ext_authz = settings.ext_authz
    target = request.headers.get(ext_authz.target_header, "").strip()
    kt.annotate({kt.MCP_SERVER: target[:256]})
    try:
        claims = await exchanger.validate(token)
        kt.annotate({kt.USER: kt.subject_name(claims)})
        _check_gateway_audience(claims, ext_authz.audiences)
        if not target or target in ext_authz.passthrough_targets:
            return Granted(token, None, exchanged=False)
        if target not in ext_authz.targets:
            return _not_routable(runtime, exchanger, target)
        result = await exchanger.exchange(token, target, claims=claims)
    except InvalidToken as exc:
        runtime.metrics.count(_label(exchanger, target), "invalid_token")
        return unauthorized(request, settings, exc.reason, error=True)
    except UnknownTarget as exc:
        return refuse(runtime, "-", "unknown_target", 403, "unknown_target", str(exc))
    except ExchangeRefused as exc:
        label = _label(exchanger, target)
        return refuse(runtime, label, "refused", 403, "exchange_refused", exc.reason)
    except ValidationUnavailable as exc:
        # Generic message: the caller is not authenticated yet; the detail (the issuer's URL and
        # the error) was logged where it happened.
        label = _label(exchanger, target)
        return refuse(runtime, label, "unavailable", 503, "token_service_unavailable", str(exc))
    except STSUnavailable as exc:
        log.warning("token exchange unavailable for target %s: %s", target, exc)
        label, reason = _label(exchanger, target), f"{exc}; retry shortly"
        return refuse(runtime, label, "unavailable", 503, "token_service_unavailable", reason)
    kt.annotate({kt.OUTCOME: result.outcome})
    return Granted(token, result.token, exchanged=result.outcome != "unchanged")


def _check_gateway_audience(claims: dict[str, Any] | None, accepted: list[str]) -> None:
    """A token at the gateway's check must be addressed to the gateway (``ext_authz.audiences``):
    a token issued for a server behind it (an exchanged token) is not replayable here."""
    if not accepted:
        return
    if claims is None:
        raise InvalidToken(
            "an opaque (non-JWT) token cannot show that it is addressed to this gateway "
            "(ext_authz.audiences is set)"
        )
    if set(accepted).isdisjoint(audiences_of(claims)):
        raise InvalidToken(
            f"the token is not addressed to this gateway (its 'aud' must contain one of "
            f"{sorted(accepted)})"
        )


def _not_routable(runtime: Runtime, exchanger: Exchanger, target: str) -> web.Response:
    """403 for a target the check does not issue: unknown, or configured for /token only."""
    if target not in exchanger.targets:
        reason = f"no token exchange target is configured for audience '{_quote(target)[:200]}'"
        return refuse(runtime, "-", "unknown_target", 403, "unknown_target", reason)
    return refuse(
        runtime,
        target,
        "not_routable",
        403,
        "target_not_routable",
        f"target '{target}' is not issued to gateway checks (ext_authz.targets); it is only "
        "available from POST /token to its authenticated clients",
    )
