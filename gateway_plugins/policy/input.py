"""Building the Rego input from what the gateway sends: pure functions, no I/O.

The policy (``policies/mcp/authz.rego``) reads ``method``, ``server``, ``tool`` (name and
normalized annotations), ``prompt`` (name, for ``prompts/get``), ``arguments`` (only when the
request body was available), ``claims`` (verified token claims), ``subject`` (a display name
for reasons) and, for ``tools/list``, a ``catalogue`` of every server's tools.

The input holds only what the policy reads: the claims of :data:`POLICY_CLAIMS` and the arguments
of :data:`POLICY_ARGUMENTS`. The input is what OPA's decision log records and what keys the
embedded engine's decision cache, so tool arguments such as ``access_token`` (a bearer token the
backend accepts in arguments) or a Secret's YAML (``resources_create_or_update``) never reach it.

The ext_authz check also reads the JSON-RPC body (:mod:`.request_body`), whose method and names
must agree with the ``x-mcp-*`` headers.

Names that reach the policy are checked here first: a malformed server or tool name is refused
with a clear reason before any engine runs (both engines then see only well-formed input, which
also keeps their reason texts identical).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BROKER_SERVER = "mcpBroker"

# MCP tool names: 1-128 of [A-Za-z0-9_.-] (the spec's recommendation); servers are
# "namespace/name" (Kubernetes names) or the broker's own name. Always used with fullmatch: with
# re.match, "$" also matches before a final newline, so "kube-system\n" would pass as a name.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,252})?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f\"\\]")

# Hint spellings of x-mcp-annotation-hints and of MCP ToolAnnotations, to the policy's keys.
_HINT_KEYS = {
    "readonly": "readOnly",
    "readonlyhint": "readOnly",
    "destructive": "destructive",
    "destructivehint": "destructive",
    "idempotent": "idempotent",
    "idempotenthint": "idempotent",
    "openworld": "openWorld",
    "openworldhint": "openWorld",
}

# The claims the policy may read; the rest of the token's claims stay out of the input. ``iss``
# is here so that two issuers' users with the same ``sub`` never share a cached decision or list.
POLICY_CLAIMS = (
    "iss",
    "sub",
    "preferred_username",
    "resource_access",
    "realm_access",
    "groups",
    "azp",
)

# The tool arguments the policy reads (namespace rules), with the JSON types it reads them as;
# every other argument stays out of the input. Never ``access_token``. A policy that needs more
# arguments adds them here (and to the Input section of policies/mcp/authz.rego).
POLICY_ARGUMENTS: dict[str, type] = {"namespace": str, "all_namespaces": bool}


class InputError(ValueError):
    """The request cannot be turned into a policy input; the message is safe to return."""


Annotations = dict[str, bool]
Catalogue = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class ToolInfo:
    """A tool of a server's catalogue: its name and normalized annotations."""

    name: str
    annotations: Annotations

    def as_input(self) -> dict[str, Any]:
        return {"name": self.name, "annotations": dict(self.annotations)}


def parse_annotation_hints(header: str | None) -> Annotations:
    """``readOnly=true,destructive=false,idempotent=unspecified`` → ``{"readOnly": True, ...}``.

    Unknown keys and values other than true/false (``unspecified``) are left out, so a missing
    hint can never count as true.
    """
    hints: Annotations = {}
    if not header:
        return hints
    for part in header.split(","):
        key, sep, value = part.partition("=")
        name = _HINT_KEYS.get(key.strip().lower())
        if not sep or name is None:
            continue
        flag = value.strip().lower()
        if flag in ("true", "false"):
            hints[name] = flag == "true"
    return hints


def normalize_annotations(raw: Mapping[str, Any] | None) -> Annotations:
    """MCP ``ToolAnnotations`` (``readOnlyHint``, ...) → the policy's keys; booleans only."""
    out: Annotations = {}
    for key, value in (raw or {}).items():
        name = _HINT_KEYS.get(str(key).lower())
        if name is not None and isinstance(value, bool):
            out[name] = value
    return out


def check_tool_name(name: str) -> str:
    if not TOOL_NAME.fullmatch(name):
        raise InputError(
            "x-mcp-toolname is not a valid MCP tool name (1-128 characters of A-Z a-z 0-9 _ . -)"
        )
    return name


def check_prompt_name(name: str) -> str:
    if not TOOL_NAME.fullmatch(name):
        raise InputError(
            "x-mcp-promptname is not a valid MCP prompt name (1-128 characters of "
            "A-Z a-z 0-9 _ . -)"
        )
    return name


def check_server_name(name: str) -> str:
    if not _SERVER_NAME.fullmatch(name):
        raise InputError(
            "x-mcp-servername is not a valid server name (expected namespace/name or mcpBroker)"
        )
    return name


def policy_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of verified claims the policy reads (never the token itself)."""
    return {key: claims[key] for key in POLICY_CLAIMS if key in claims}


def display_name(claims: Mapping[str, Any]) -> str:
    """Who the claims are, for reasons and the decision log: username, else subject."""
    for key in ("preferred_username", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return safe_text(value, 128)
    return "unknown user"


def check_arguments(arguments: Any) -> dict[str, Any]:
    """Tool arguments must be an object; a ``namespace`` argument must be a namespace name."""
    if not isinstance(arguments, dict):
        raise InputError("params.arguments of the tools/call body must be a JSON object")
    namespace = arguments.get("namespace")
    if (
        namespace is not None
        and namespace != ""
        and (not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace))
    ):
        raise InputError("argument 'namespace' is not a valid Kubernetes namespace name")
    return arguments


def policy_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the policy reads (:data:`POLICY_ARGUMENTS`), each only with its JSON type.

    Anything else (tokens, manifests, commands) is left out. A value of another type is left out
    too: the policy only acts on a string namespace and ``all_namespaces: true``, and the backend
    refuses a non-boolean flag.
    """
    return {
        key: arguments[key]
        for key, kind in POLICY_ARGUMENTS.items()
        if isinstance(arguments.get(key), kind)
    }


def safe_text(value: str, limit: int) -> str:
    """Caller-supplied text made safe to quote in a reason: no quotes or control characters."""
    return _UNSAFE_TEXT.sub("?", value)[:limit]


def call_input(
    *,
    method: str,
    server: str,
    tool: str,
    annotations: Annotations,
    claims: Mapping[str, Any],
    arguments: Mapping[str, Any] | None,
    prompt: str = "",
) -> dict[str, Any]:
    """The input of ``data.mcp.authz.decision`` for one request (``prompt``: prompts/get)."""
    doc: dict[str, Any] = {
        "method": method,
        "server": server,
        "tool": {"name": tool, "annotations": dict(annotations)},
        "claims": policy_claims(claims),
        "subject": {"name": display_name(claims)},
    }
    if prompt:
        doc["prompt"] = {"name": prompt}
    if arguments is not None:
        doc["arguments"] = policy_arguments(arguments)
    return doc


def list_input(claims: Mapping[str, Any], catalogue: Catalogue | None) -> dict[str, Any]:
    """The input of ``data.mcp.authz.allowed_tools``; without a catalogue, roles decide."""
    doc: dict[str, Any] = {
        "method": "tools/list",
        "claims": policy_claims(claims),
        "subject": {"name": display_name(claims)},
    }
    if catalogue is not None:
        doc["catalogue"] = catalogue
    return doc


def catalogue_from_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A server's MCP ``tools/list`` entries → catalogue entries (unique names, sorted)."""
    seen: dict[str, dict[str, Any]] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            continue
        annotations = tool.get("annotations")
        seen[name] = ToolInfo(
            name, normalize_annotations(annotations if isinstance(annotations, Mapping) else None)
        ).as_input()
    return [seen[name] for name in sorted(seen)]


def load_catalogue(doc: Mapping[str, Any]) -> Catalogue:
    """A catalogue document: ``{server: [tool, ...]}`` or ``{server: {"tools": [...]}}``.

    Each tool is an MCP tool (``name``, ``annotations`` with ``readOnlyHint``...) or already in the
    policy's form (``annotations`` with ``readOnly``); both normalize to the policy's form.
    """
    catalogue: Catalogue = {}
    for server, entry in doc.items():
        check_server_name(str(server))
        tools = entry.get("tools") if isinstance(entry, Mapping) else entry
        if not isinstance(tools, list):
            raise InputError(
                f"catalogue entry {server!r} must be a list of tools or {{'tools': [...]}}"
            )
        catalogue[str(server)] = catalogue_from_tools(t for t in tools if isinstance(t, Mapping))
    return catalogue


def catalogue_annotations(
    catalogue: Catalogue | None, server: str, tool: str
) -> Annotations | None:
    """A tool's annotations from the catalogue; None when the catalogue does not know the tool."""
    for entry in (catalogue or {}).get(server, []):
        if entry.get("name") == tool:
            found: Annotations = dict(entry.get("annotations", {}))
            return found
    return None


def annotations_in(catalogue: Catalogue | None, server: str, tool: str) -> Annotations:
    """A tool's annotations from the catalogue, empty when unknown."""
    return catalogue_annotations(catalogue, server, tool) or {}


def normalize_allowed(
    allowed: Mapping[str, Any], servers: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Engine output → ``{server: sorted unique names}``; every server present, never null."""
    out: dict[str, list[str]] = {server: [] for server in servers}
    for server, names in allowed.items():
        out[str(server)] = sorted({str(n) for n in names or []})
    return out
