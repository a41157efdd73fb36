"""Where access control is enforced: a middleware on each cluster's one HTTP client session.

Every request the backend sends to an API server leaves through its cluster's shared aiohttp
``ClientSession`` (:meth:`~mcp_backend.kube.client.KubeClient.session`): the client's requests and
streamed reads, exec's WebSocket handshake (``ws_connect`` sends its upgrade request through the
session's request path, middlewares included) and every request the helm API guard forwards for
the helm CLI. :class:`AccessControlMiddleware` is installed on that session, so each of them
passes :meth:`AccessPolicy.admit <mcp_backend.access.policy.AccessPolicy.admit>` (the request,
then its body) right before it is sent, whichever code sent it; a refused request raises
:class:`~mcp_backend.errors.AccessDenied` and never leaves the backend.

What the middleware checks is the request as aiohttp will send it: the URL's path (decoded, as
the API server reads it) with the configured server's own path prefix taken off, the method, and
the body's bytes. A WebSocket upgrade (a ``GET``) is checked as the ``create`` the API server
authorizes it as. Answers are not its business: Secret redaction happens where the client decodes
them (:mod:`mcp_backend.kube.client`, :mod:`mcp_backend.kube.streams`); the helm guard passes
them through unredacted on purpose.

Earlier checks of the same policy elsewhere (a kind resolved by a tool, the objects of an apply
plan or of a rendered chart, ``can_i``'s report) refuse sooner and with a message that fits the
tool; they are early refusals, this middleware is the layer that enforces.
"""

from __future__ import annotations

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs, payload
from yarl import URL

from mcp_backend.access.policy import AccessPolicy
from mcp_backend.errors import AccessDenied

_DEFAULT_MEDIA_TYPE = "application/octet-stream"  # what aiohttp labels an unlabelled body


class AccessControlMiddleware:
    """``ClientSession(middlewares=[AccessControlMiddleware(policy, server)])``: every request of
    the session is admitted by ``policy`` before it is sent."""

    def __init__(self, policy: AccessPolicy, server: str) -> None:
        self.policy = policy
        self._prefix = URL(server).path.rstrip("/")

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        self.policy.admit(
            _checked_method(request),
            self.api_path(request.url),
            await _body_of(request),
            _media_type(request),
        )
        return await handler(request)

    def api_path(self, url: URL) -> str:
        """The API path of ``url`` (decoded, the server's path prefix taken off); refused when it
        is outside the server's prefix or has ``.``/``..`` segments."""
        path = url.path
        if self._prefix:
            if path != self._prefix and not path.startswith(self._prefix + "/"):
                raise AccessDenied(f"{path!r} is not a path of this cluster's API server")
            path = path[len(self._prefix) :] or "/"
        if any(part in (".", "..") for part in path.split("/")):
            raise AccessDenied(f"path {path!r} is not a plain API path")
        return path


def _checked_method(request: ClientRequest) -> str:
    """The method the API server authorizes: a WebSocket upgrade (exec, attach, port-forward)
    is a ``create`` of its subresource, though it is sent as a GET."""
    if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
        return hdrs.METH_POST
    return request.method


async def _body_of(request: ClientRequest) -> bytes | None:
    """The body's bytes, None without one. Only bytes bodies are sent to API servers here (JSON
    the client built, the bytes the helm guard read): any other kind is refused, unread."""
    body = request.body
    if not body:
        return None
    if not isinstance(body, payload.BytesPayload):
        raise AccessDenied(f"a request body of type {type(body).__name__} cannot be checked")
    return await body.as_bytes() or None


def _media_type(request: ClientRequest) -> str:
    value = request.headers.get(hdrs.CONTENT_TYPE) or _DEFAULT_MEDIA_TYPE
    return value.split(";", 1)[0].strip().lower()
