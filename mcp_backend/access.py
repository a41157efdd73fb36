"""The one access-control layer every API server call passes through.

:class:`AccessPolicy` decides from the request path alone (``/api/v1/namespaces/x/secrets``), so
a denied kind is denied whichever tool asked, generic ones included, and redaction applies to
every response. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mcp_backend.config import DeniedKind
from mcp_backend.errors import AccessDenied

REDACTED = "***"
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_IRREGULAR = {"endpoints": "endpoints", "podsecuritypolicy": "podsecuritypolicies"}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class ApiPath:
    """A parsed resource path: ``/apis/apps/v1/namespaces/ns/deployments/web/scale``."""

    group: str
    version: str
    resource: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    def verb(self, method: str) -> str:
        """The RBAC verb the API server will check for ``method`` on this path."""
        if method == "GET" and self.name is None:
            return "list"
        if method == "DELETE" and self.name is None:
            return "deletecollection"
        return _VERBS.get(method, method.lower())

    def describe(self) -> str:
        """``deployments.apps/web`` style text for messages."""
        res = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.subresource:
            res += f"/{self.subresource}"
        return f"{res} {self.name!r}" if self.name else res


def parse_path(path: str) -> ApiPath | None:
    """Split a resource path; None for non-resource paths (discovery, /version, node proxy root)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = "/".join(rest[2:]) or None
    if resource == "namespaces" and namespace is None and name is not None:
        # /api/v1/namespaces/x is the namespace object itself
        return ApiPath(group, version, "namespaces", None, name, sub)
    return ApiPath(group, version, resource, namespace, name, sub)


def plural(kind: str) -> str:
    """Kubernetes-style plural of a Kind (the API server's own rule for most kinds)."""
    low = kind.lower()
    if low in _IRREGULAR:
        return _IRREGULAR[low]
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return low[:-1] + "ies"
    if low.endswith(("s", "x", "z", "ch", "sh")):
        return low + "es"
    return low + "s"


class AccessPolicy:
    """Denied kinds and Secret redaction, applied to every request and response."""

    def __init__(self, denied: Iterable[DeniedKind], *, redact_secrets: bool = True) -> None:
        denied = list(denied)
        self._denied_groups = {d.group.lower() for d in denied if d.kind == "*"}
        # (group, lower-case name) -> configured kind; each denied kind is known by its Kind
        # and its plural resource name, case-insensitively, so `Secret`, `secret` and `secrets`
        # all deny Secrets (a config naming the resource must not silently deny nothing).
        self._denied: dict[tuple[str, str], str] = {}
        for d in denied:
            if d.kind != "*":
                for name in (d.kind.lower(), plural(d.kind)):
                    self._denied.setdefault((d.group.lower(), name), d.kind)
        self.redact_secrets = redact_secrets

    def denial(self, group: str, resource: str, kind: str | None = None) -> str | None:
        """Why ``resource.group`` (of ``kind`` when known) is denied, or None when allowed."""
        group = group.lower()
        if group in self._denied_groups:
            return f"every kind of API group {group!r} is denied by this server's policy"
        for name in (resource.split("/", 1)[0], kind):
            denied = self._denied.get((group, name.lower())) if name else None
            if denied is not None:
                return f"kind {denied} is denied by this server's policy"
        return None

    def check_kind(self, group: str, kind: str, resource: str | None = None) -> None:
        """Raise :class:`AccessDenied` when the kind is denied (tool layer, before any call)."""
        reason = self.denial(group, resource or plural(kind), kind)
        if reason is not None:
            raise AccessDenied(f"{kind} ({group or 'core'}): {reason}; it is not available here")

    def check_request(self, method: str, path: str) -> ApiPath | None:
        """Raise :class:`AccessDenied` for a call on a denied kind; return the parsed path."""
        parsed = parse_path(path)
        if parsed is None:
            return None
        reason = self.denial(parsed.group, parsed.resource)
        if reason is not None:
            raise AccessDenied(
                f"{parsed.verb(method)} {parsed.describe()}: {reason}; it is not available here"
            )
        return parsed

    def filter_response(self, parsed: ApiPath | None, body: Any) -> Any:
        """Redact Secret values in a response (object, list, Table), in place; returns ``body``."""
        if not self.redact_secrets or not isinstance(body, dict):
            return body
        is_secret_path = parsed is not None and parsed.group == "" and parsed.resource == "secrets"
        # Only Secret responses and generic v1 Lists can hold Secret values: skip the walk of
        # every other (possibly large) response.
        if is_secret_path or body.get("kind") in ("Secret", "List"):
            redact_tree(body, assume_secret=is_secret_path)
        return body


def redact_secret(obj: dict[str, Any]) -> None:
    """Replace every value of a Secret (data, stringData, last-applied annotation) with ***."""
    for field in ("data", "stringData"):
        values = obj.get(field)
        if isinstance(values, dict):
            obj[field] = dict.fromkeys(values, REDACTED)
    annotations = (obj.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict) and _LAST_APPLIED in annotations:
        annotations[_LAST_APPLIED] = REDACTED


def redact_tree(body: Any, *, assume_secret: bool = False) -> None:
    """Redact every Secret in a response: ``kind: Secret`` anywhere, and with ``assume_secret``
    (a response of the secrets resource) every object in it, Table rows' metadata included."""
    if isinstance(body, list):
        for item in body:
            redact_tree(item, assume_secret=assume_secret)
        return
    if not isinstance(body, dict):
        return
    kind = str(body.get("kind") or "")
    container = kind.endswith("List") or kind == "Table"
    if kind == "Secret" or (assume_secret and not container):
        redact_secret(body)
    for key in ("items", "rows"):
        if isinstance(body.get(key), list):
            redact_tree(body[key], assume_secret=assume_secret)
    if isinstance(body.get("object"), dict):
        redact_tree(body["object"], assume_secret=assume_secret)
