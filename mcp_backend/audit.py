"""Who did what: the audit line of each tool call, and the id that ties it to the API server's log.

Each tool call is logged once (``tool call``, field ``audit: true``) with the caller, the cluster,
the tool, its arguments (values that could carry a secret elided), the outcome, the duration and
the bytes returned, under the request id the gateway gave the call (Envoy's ``x-request-id``,
the id the policy's decision log records too) and the W3C trace id when the call carries one.

Every API server request made for the call sends ``Audit-ID: <request id>-<6 hex>``: the API
server keeps a client's ``Audit-ID`` as the ``auditID`` of its audit events (``withAuditInit`` in
``k8s.io/apiserver``), so one search by the request id finds the call in the gateway's decision
log, in this log and in the API server's audit log. The suffix keeps the ids of one call's
requests distinct, since audit tools treat an ``auditID`` as one request's.

The caller is read from the token's claims without verifying them: the API server verifies the
token and records the identity it authenticated; this line says who the token claims to be.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kmg_common.logging import request_id_var
from mcp_backend import __version__

AUDIT_ID_HEADER = "Audit-ID"
USER_AGENT = f"kube-mcp-gateway-backend/{__version__}"
# ids we pass on: what Envoy and common clients generate (UUIDs, hex); anything else gets ours
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# argument names whose values can carry secrets: manifests, chart values, commands, env
SECRET_BEARING = frozenset({"resource", "manifest", "values", "command", "env", "args"})
_SECRET_NAME = re.compile(r"token|password|secret|credential|key", re.IGNORECASE)
MAX_ARGUMENT_CHARS = 200


def audit_id(rid: str | None = None) -> str:
    """The ``Audit-ID`` of one API server request of the tool call ``rid`` (default: the
    current one)."""
    rid = request_id_var.get() if rid is None else rid
    prefix = rid if rid is not None and _ID.fullmatch(rid) else "kmg"
    return f"{prefix}-{secrets.token_hex(3)}"


def caller_headers(token: str, **extra: str) -> dict[str, str]:
    """Headers of an API server request made with the caller's ``token``."""
    return {"Authorization": f"Bearer {token}", AUDIT_ID_HEADER: audit_id(), **extra}


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The W3C trace id of the incoming request (``traceparent``), if it carries a valid one."""
    match = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


@dataclass(frozen=True)
class Caller:
    """Who the token says it is: user name, groups and the OAuth client (the agent's app)."""

    user: str
    groups: tuple[str, ...] = ()
    client: str | None = None


def caller_of(token: str | None) -> Caller:
    """The caller named by a JWT's claims (unverified); ``unknown`` for anything else."""
    claims = _claims(token) if token else None
    if claims is None:
        return Caller("unknown")
    user = claims.get("preferred_username") or claims.get("sub") or "unknown"
    groups = claims.get("groups")
    client = claims.get("azp")
    return Caller(
        user=str(user)[:MAX_ARGUMENT_CHARS],
        groups=tuple(str(g)[:MAX_ARGUMENT_CHARS] for g in groups[:50])
        if isinstance(groups, list)
        else (),
        client=str(client)[:MAX_ARGUMENT_CHARS] if isinstance(client, str) else None,
    )


def _claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16384:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def audited_arguments(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as the audit line shows them: values that could hold a secret elided (with
    their size), long values cut, nothing that is not plain data."""
    shown: dict[str, Any] = {}
    for name, value in args.items():
        key = str(name)[:MAX_ARGUMENT_CHARS]
        if key in SECRET_BEARING or _SECRET_NAME.search(key):
            shown[key] = _elided(value)
        else:
            shown[key] = _plain(value)
    return shown


def _elided(value: Any) -> str:
    if isinstance(value, list):
        return f"<elided: {len(value)} items>"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"<elided: {len(text)} chars>"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return audited_arguments(value)
    if isinstance(value, list):
        return [_plain(v) for v in value[:20]] + ([f"... ({len(value)} items)"] * (len(value) > 20))
    text = str(value)
    if len(text) > MAX_ARGUMENT_CHARS:
        return text[:MAX_ARGUMENT_CHARS] + f"... ({len(text)} chars)"
    return text
