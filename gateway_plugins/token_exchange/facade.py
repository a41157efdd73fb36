"""RFC 8693 token endpoint facade: the request shape Keycloak takes, answered from our cache.

Request: ``POST /token``, ``application/x-www-form-urlencoded``, client authentication by HTTP
Basic (``client_secret_basic``) or ``client_id``/``client_secret`` form fields; ``grant_type`` =
token exchange, ``subject_token``, ``subject_token_type`` (access_token or jwt), one ``audience``
(or ``resource``), optional ``scope`` and ``requested_token_type`` (access_token or jwt).

Errors follow RFC 6749 §5.2 / RFC 8693 §2.2.2: ``invalid_client`` (401), ``invalid_request``
(also for an invalid subject token), ``unsupported_grant_type``, ``invalid_target``,
``invalid_scope`` (400), and ``temporarily_unavailable`` (503) when Keycloak is down.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Callable

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from gateway_plugins.common.jwt_validation import InvalidToken, ValidationUnavailable
from gateway_plugins.token_exchange.exchanger import Exchanger, ExchangeRefused, ExchangeResult
from gateway_plugins.token_exchange.sts_client import (
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS,
    STSUnavailable,
)
from gateway_plugins.token_exchange.targets import ScopeNotAllowed, UnknownTarget

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN
_ACCEPTED_TYPES = (TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

ClientCheck = Callable[[str, str], bool]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers: dict[str, str] = {}


def oauth_error(exc: OAuthError) -> web.Response:
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers={**_NO_STORE, **exc.headers},
    )


def _authenticate(request: web.Request, form: MultiDictProxy[str], check: ClientCheck) -> str:
    header = request.headers.get("Authorization", "")
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    if header:
        if form_secret is not None:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise _invalid_client("unsupported client authentication scheme; use HTTP Basic")
        try:
            raw = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid_client("malformed HTTP Basic credentials") from None
        client_id, sep, secret = raw.partition(":")
        if not sep:
            raise _invalid_client("malformed HTTP Basic credentials")
        client_id, secret = urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
    elif form_id and form_secret:
        client_id, secret = form_id, form_secret
    else:
        raise _invalid_client("client authentication required (HTTP Basic)")
    if not check(client_id, secret):
        raise _invalid_client("client authentication failed")
    return client_id


def _invalid_client(description: str) -> OAuthError:
    exc = OAuthError("invalid_client", description, status=401)
    exc.headers["WWW-Authenticate"] = 'Basic realm="token-exchange"'
    return exc


def _single(form: MultiDictProxy[str], name: str, *, required: bool) -> str | None:
    values = form.getall(name, [])
    if len(values) > 1:
        raise OAuthError("invalid_request", f"parameter '{name}' given more than once")
    if not values or not values[0]:
        if required:
            raise OAuthError("invalid_request", f"missing parameter '{name}'")
        return None
    return values[0]


def _target(form: MultiDictProxy[str]) -> str:
    audiences = [a for a in form.getall("audience", []) if a]
    resources = [r for r in form.getall("resource", []) if r]
    wanted = audiences or resources
    if not wanted:
        raise OAuthError("invalid_request", "missing parameter 'audience' (or 'resource')")
    if len(wanted) > 1:
        raise OAuthError("invalid_target", "exactly one 'audience' (or 'resource') is supported")
    return wanted[0]


async def handle_token_request(
    request: web.Request, exchanger: Exchanger, check_client: ClientCheck
) -> web.Response:
    try:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError(
                "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
        try:
            form = await request.post()
        except (UnicodeDecodeError, ValueError):
            raise OAuthError(
                "invalid_request", "the form body is not valid UTF-8 URL-encoded text"
            ) from None
        fields = MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))
        _authenticate(request, fields, check_client)
        grant = _single(fields, "grant_type", required=True)
        if grant != GRANT_TOKEN_EXCHANGE:
            raise OAuthError("unsupported_grant_type", f"only {GRANT_TOKEN_EXCHANGE} is supported")
        subject = _single(fields, "subject_token", required=True)
        assert subject is not None
        if _single(fields, "subject_token_type", required=True) not in _ACCEPTED_TYPES:
            raise OAuthError("invalid_request", "subject_token_type must be access_token or jwt")
        if fields.get("actor_token"):
            raise OAuthError("invalid_request", "actor_token (delegation) is not supported")
        requested = _single(fields, "requested_token_type", required=False)
        if requested is not None and requested not in _ACCEPTED_TYPES:
            raise OAuthError("invalid_request", "requested_token_type must be access_token or jwt")
        audience = _target(fields)
        scope = _single(fields, "scope", required=False)
        result = await _exchange(exchanger, subject, audience, scope.split() if scope else None)
    except OAuthError as exc:
        return oauth_error(exc)
    body: dict[str, object] = {
        "access_token": result.token,
        "issued_token_type": TOKEN_TYPE_ACCESS,
        "token_type": "Bearer",
        "expires_in": result.expires_in,
    }
    if result.scope:
        body["scope"] = result.scope
    return web.json_response(body, headers=_NO_STORE)


async def _exchange(
    exchanger: Exchanger, subject: str, audience: str, scopes: list[str] | None
) -> ExchangeResult:
    try:
        return await exchanger.exchange(subject, audience, scopes)
    except InvalidToken as exc:
        raise OAuthError("invalid_request", f"invalid subject_token: {exc.reason}") from None
    except UnknownTarget as exc:
        raise OAuthError("invalid_target", str(exc)) from None
    except ScopeNotAllowed as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    except ExchangeRefused as exc:
        raise OAuthError(exc.error, exc.reason) from None
    except ValidationUnavailable as exc:  # generic message; the detail is in the log
        raise OAuthError("temporarily_unavailable", str(exc), status=503) from None
    except STSUnavailable as exc:
        raise OAuthError("temporarily_unavailable", f"{exc}; retry shortly", status=503) from None
