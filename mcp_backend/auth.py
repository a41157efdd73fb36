"""Bearer token extraction on every request, and the 401 answer with RFC 9728 pointers.

The token is never validated here: the chosen API server authenticates it (opaque tokens pass
through untouched) and its RBAC decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlparse

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_backend.metrics import Metrics

METADATA_PATH = "/.well-known/oauth-protected-resource"
ALT_HEADER = "kubernetes-authorization"


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of ``Authorization`` (or ``kubernetes-authorization``), else None."""
    for header in ("authorization", ALT_HEADER):
        value = (headers.get(header) or "").strip()
        if not value:
            continue
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
        if header == ALT_HEADER and " " not in value:
            return value
    return None


def metadata_url(resource_url: str) -> str:
    """RFC 9728 §3.1: ``https://h/mcp`` → ``https://h/.well-known/oauth-protected-resource/mcp``."""
    parsed = urlparse(resource_url)
    path = parsed.path if parsed.path != "/" else ""
    return f"{parsed.scheme}://{parsed.netloc}{METADATA_PATH}{path}"


def request_resource_url(scope: Scope, configured: str | None) -> str:
    """The configured public URL, or the one this request reached (scheme://host/mcp)."""
    if configured:
        return configured
    headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    host = headers.get("host", "localhost")
    scheme = headers.get("x-forwarded-proto", scope.get("scheme", "http"))
    return f"{scheme}://{host}/mcp"


class RequireBearer:
    """ASGI wrapper of ``/mcp``: no token → 401 + ``WWW-Authenticate: Bearer resource_metadata``."""

    def __init__(
        self, app: ASGIApp, *, resource_url: str | None, metrics: Metrics, optional: bool = False
    ) -> None:
        self.app = app
        self.resource_url = resource_url
        self.metrics = metrics
        self.optional = optional

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.optional or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if extract_token(headers) is not None:
            await self.app(scope, receive, send)
            return
        self.metrics.unauthenticated.inc()
        meta = metadata_url(request_resource_url(scope, self.resource_url))
        body = json.dumps(
            {
                "error": "invalid_token",
                "error_description": "a bearer token is required: send 'Authorization: Bearer "
                "<token>' (the token is passed to the Kubernetes API server)",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (
                        b"www-authenticate",
                        f'Bearer error="invalid_token", resource_metadata="{meta}"'.encode(),
                    ),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
