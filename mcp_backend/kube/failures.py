"""What the client reports when an API server refuses a request or cannot be reached: the
refusal as the error of its status (401, 403, 404, other), naming the cluster, the verb and the
object, and the texts of transport failures."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from mcp_backend.access.policy import ApiPath
from mcp_backend.cluster_config import ClusterConfig
from mcp_backend.errors import ClusterError, Forbidden, NotFound, Unauthorized

ERROR_BODY_MAX = 64 * 1024  # of a refusal, only the Status message is used
_USER_IN_MESSAGE = re.compile(r'User "([^"]*)"')


async def refusal(
    cluster: ClusterConfig,
    method: str,
    path: str,
    parsed: ApiPath | None,
    status: int,
    raw: bytes,
    whoami: Callable[[], Awaitable[str]],
) -> ClusterError:
    """The error of an API server's refusal (``status`` >= 400, ``raw`` the start of its body):
    who was refused what, in words that say what to do; ``whoami`` names the user of a 403 whose
    message does not."""
    message, reason = status_message(raw)
    verb = parsed.verb(method) if parsed else method
    what = parsed.describe() if parsed else short(path)
    where = f" in namespace {parsed.namespace!r}" if parsed and parsed.namespace else ""
    details: dict[str, Any] = {"cluster": cluster.name, "status": status, "verb": verb}
    if parsed:
        details |= {"resource": parsed.resource, "group": parsed.group}
        if parsed.namespace:
            details["namespace"] = parsed.namespace
    if status == 401:
        return Unauthorized(
            f"cluster {cluster.name!r} ({cluster.server}) rejected the bearer token "
            f"(401 Unauthorized) for {verb} {what}: the token is expired, malformed, or not "
            "issued for an issuer/audience this cluster trusts. Sign in again or use a token "
            "meant for this cluster.",
            status=401,
            reason=reason,
            details=details,
        )
    if status == 403:
        user = _USER_IN_MESSAGE.search(message)
        username = user.group(1) if user else await whoami()
        details["user"] = username
        return Forbidden(
            f"cluster {cluster.name!r}: user {username!r} may not {verb} {what}{where} "
            f"(403 Forbidden by the cluster's RBAC). API server said: {message}. Ask a "
            "cluster admin for a Role granting it, or use another namespace or context.",
            status=403,
            reason=reason,
            details=details,
        )
    if status == 404:
        return NotFound(
            f"cluster {cluster.name!r}: {message or 'not found'} ({verb} {what}{where})",
            status=404,
            reason=reason,
            details=details,
        )
    return ClusterError(
        f"cluster {cluster.name!r} refused {verb} {what}{where}: {message or f'HTTP {status}'}",
        status=status,
        reason=reason,
        details=details,
    )


def status_message(raw: bytes) -> tuple[str, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()[:500], ""
    if isinstance(body, dict):
        return str(body.get("message") or "").strip(), str(body.get("reason") or "")
    return "", ""


def client_error_text(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the TLS certificate is not trusted (check ca_file / ca_data)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    return str(exc) or type(exc).__name__


def short(path: str) -> str:
    return path if len(path) < 120 else path[:117] + "..."
