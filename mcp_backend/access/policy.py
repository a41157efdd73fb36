"""The access policy: which requests to API servers are refused, and what answers redact.

:class:`AccessPolicy` decides from the request path alone (``/api/v1/namespaces/x/secrets``), so
a denied kind is denied whichever tool asked, generic ones included, and redaction applies to
every response. Pure: no I/O. It is enforced on every request as it is sent, by the middleware of
each cluster's client session (:mod:`mcp_backend.access.client_middleware`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_backend.config import DeniedKind
from mcp_backend.errors import AccessDenied

REDACTED = "***"
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 - a type name
_WRITES = frozenset({"POST", "PUT", "PATCH"})
_ComposeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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

    def admit(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> ApiPath | None:
        """The check every API call passes as it is sent (by the access-control middleware of
        the cluster's client session, whoever sends it: the backend's client, the helm guard):
        the request, then its body when it has one. Returns the parsed path; raises
        :class:`AccessDenied`."""
        parsed = self.check_request(method, path)
        if body is not None:
            self.check_body(method, parsed, body, content_type)
        return parsed

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

    def token_secret_denial(self) -> str | None:
        """Why a Secret of type ``kubernetes.io/service-account-token`` is refused, or None.

        The API server's token controller fills such a Secret with a non-expiring token of the
        ServiceAccount its annotation names: creating one acts on a ServiceAccount, so it is
        refused whenever the ServiceAccount kind is denied (as by default)."""
        reason = self.denial("", "serviceaccounts", "ServiceAccount")
        if reason is None:
            return None
        return (
            f"a Secret of type {SERVICE_ACCOUNT_TOKEN_TYPE} makes the cluster issue a token of a "
            f"ServiceAccount, and {reason}"
        )

    def check_object(self, group: str, resource: str, obj: Mapping[str, Any], what: str) -> None:
        """Raise :class:`AccessDenied` for an object this server must not create even though its
        kind is allowed: a service-account-token Secret while ServiceAccount is denied."""
        if group == "" and resource == "secrets" and _is_token_type(obj.get("type")):
            reason = self.token_secret_denial()
            if reason is not None:
                raise AccessDenied(f"{what}: {reason}; it is not available here")

    def check_body(
        self, method: str, parsed: ApiPath | None, body: bytes, content_type: str
    ) -> None:
        """Raise :class:`AccessDenied` for a write whose body creates a service-account-token
        Secret (see :meth:`token_secret_denial`), whatever client sent it (tools, helm)."""
        if (
            method not in _WRITES
            or parsed is None
            or parsed.group != ""
            or parsed.resource != "secrets"
            or parsed.subresource is not None
            or not body
        ):
            return
        if declares_token_type(body, content_type):
            reason = self.token_secret_denial()
            if reason is not None:
                raise AccessDenied(
                    f"{parsed.verb(method)} {parsed.describe()}: {reason}; it is not available here"
                )

    def filter_element(self, parsed: ApiPath | None, element: Any) -> Any:
        """Redact one element of a list read piece by piece (an item or a Table row), in place,
        as :meth:`filter_response` redacts a whole list; returns ``element``."""
        if self.redact_secrets and isinstance(element, dict):
            secrets = parsed is not None and parsed.group == "" and parsed.resource == "secrets"
            redact_tree(element, assume_secret=secrets)
        return element

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


def _is_token_type(value: Any) -> bool:
    # The API server compares the type exactly; any spelling of it is refused here.
    return isinstance(value, str) and value.strip().lower() == SERVICE_ACCOUNT_TOKEN_TYPE


def declares_token_type(body: bytes, content_type: str) -> bool:
    """Whether a request body for a Secret gives it the service-account-token type.

    JSON and YAML bodies (server-side apply, merge and strategic patches: JSON is YAML too) are
    read as a YAML node tree, so every top-level ``type`` key counts (duplicates, any case, merge
    keys, escapes all resolved as the API server's parser would); anything that does not read
    as YAML (protobuf, which carries strings as they are) counts when the type's text occurs in
    it at all. A JSON patch (a list of operations) cannot set the type: the API server refuses
    to change the type of an existing Secret, and a patch cannot create one."""
    if "protobuf" not in content_type:
        try:
            node = yaml.compose(body, Loader=_ComposeLoader)
        except (yaml.YAMLError, ValueError, RecursionError):
            pass
        else:
            return _mapping_declares_token_type(node, set())
        try:  # JSON that YAML does not read (tabs between tokens, for one)
            return _object_declares_token_type(json.loads(body, object_pairs_hook=_Pairs))
        except (ValueError, RecursionError):
            pass
    return SERVICE_ACCOUNT_TOKEN_TYPE.encode() in body.lower()


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as all its (key, value) pairs, duplicates kept."""


def _object_declares_token_type(obj: Any) -> bool:
    return isinstance(obj, _Pairs) and any(
        key.strip().lower() == "type" and _is_token_type(value) for key, value in obj
    )


def _mapping_declares_token_type(node: Any, seen: set[int]) -> bool:
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return False
    seen.add(id(node))
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name == "<<":  # a merge key: the merged mappings' keys count as this one's
            merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if any(_mapping_declares_token_type(m, seen) for m in merged):
                return True
        elif (
            isinstance(name, str)
            and name.strip().lower() == "type"
            and isinstance(value, yaml.ScalarNode)
            and _is_token_type(value.value)
        ):
            return True
    return False
