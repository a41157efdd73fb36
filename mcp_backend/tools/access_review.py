"""``can_i``: what the caller may do on a cluster, asked of the API server with the caller's own
token: one action (SelfSubjectAccessReview), or every rule in a namespace
(SelfSubjectRulesReview). Kinds this server denies are marked: RBAC may allow what the backend
refuses all the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_backend.access.policy import AccessPolicy
from mcp_backend.errors import InvalidArguments
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import ResourceInfo
from mcp_backend.rendering.output import ToolOutput, align, truncate
from mcp_backend.tools.base import R_IDEMPOTENT, ToolContext, ToolSpec, prop
from mcp_backend.tools.pods import DEFAULT_NAMESPACE

AUTHZ = "/apis/authorization.k8s.io/v1"
REVIEW_API_VERSION = "authorization.k8s.io/v1"
_VERB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz*")


@dataclass(frozen=True)
class Target:
    """What a SelfSubjectAccessReview asks about: a resource (``group``/``resource``/
    ``subresource``) or a non-resource URL (``path``)."""

    resource: str = ""
    group: str = ""
    subresource: str = ""
    path: str = ""
    served: bool = True  # False: the cluster's discovery does not list the resource

    def describe(self) -> str:
        if self.path:
            return self.path
        text = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{text}/{self.subresource}" if self.subresource else text


def _matches(info: ResourceInfo, name: str, group: str | None) -> bool:
    if group is not None and info.group != group:
        return False
    low = name.lower()
    return low in (info.resource, info.kind.lower(), *info.short_names)


async def resolve_target(api: Api, text: str) -> Target:
    """``pods``, ``pods/log``, ``deployments.apps``, ``deploy``, ``Deployment``, ``*`` or a
    non-resource URL (``/healthz``) as RBAC names it, the resource's group found by discovery."""
    text = text.strip()
    if text.startswith("/"):
        return Target(path=text)
    base, _, sub = text.partition("/")
    if not base or any(c.isspace() for c in text):
        raise InvalidArguments(
            f"resource {text!r} is not a resource: use e.g. 'pods', 'pods/log', "
            "'deployments.apps' or a non-resource URL such as '/healthz'"
        )
    if base == "*":
        return Target(resource="*", group="*", subresource=sub)
    name, dot, group = base.partition(".")
    disc = await api.discovery()
    found = [r for r in disc.resources if _matches(r, name, group if dot else None)]
    if not found:
        return Target(resource=name.lower(), group=group, subresource=sub, served=False)
    # Several versions of one resource, or one name in several groups: the core/first group.
    found.sort(key=lambda r: (r.group != "", r.group))
    return Target(resource=found[0].resource, group=found[0].group, subresource=sub)


def _verb(ctx: ToolContext) -> str:
    verb = ctx.req("verb").strip().lower()
    if not verb or not set(verb) <= _VERB_CHARS:
        raise InvalidArguments(
            f"verb {verb!r} is not a Kubernetes verb: e.g. get, list, watch, create, update, "
            "patch, delete, deletecollection, or '*'"
        )
    return verb


async def can_i(ctx: ToolContext) -> ToolOutput:
    if ctx.text("verb") is None and ctx.text("resource") is None:
        return await _rules(ctx)
    if ctx.text("verb") is None or ctx.text("resource") is None:
        raise InvalidArguments(
            "give verb and resource together to check one action (e.g. verb='delete', "
            "resource='pods'), or neither to list what you may do in a namespace"
        )
    verb = _verb(ctx)
    resource = ctx.req("resource")
    namespace = ctx.text("namespace")
    name = ctx.text("name")
    api = await ctx.api()
    target = await resolve_target(api, resource)
    review = await api.call(
        "POST", f"{AUTHZ}/selfsubjectaccessreviews", body=_ssar(verb, target, namespace, name)
    )
    status = review.get("status") or {}
    allowed = bool(status.get("allowed"))
    denial = _backend_denial(ctx.clusters.access, target)
    scope = f"in namespace {namespace!r}" if namespace else "in every namespace / cluster-wide"
    what = f"{verb} {target.describe()}" + (f" {name!r}" if name else "")
    if target.path:
        scope = ""
    answer = "yes" if allowed and denial is None else "no"
    text = f"{answer}: {what}{' ' + scope if scope else ''} on cluster {api.name!r}\n"
    if allowed and denial is not None:
        text += f"The cluster's RBAC allows it, but this server refuses it: {denial}.\n"
    elif not allowed:
        reason = status.get("reason") or "no RBAC rule grants it"
        text += f"The cluster's RBAC does not allow it ({reason}).\n"
    if status.get("evaluationError"):
        text += f"Evaluation error reported by the API server: {status['evaluationError']}\n"
    if not target.served:
        text += (
            f"Note: cluster {api.name!r} serves no resource {target.resource!r}"
            f"{' in group ' + repr(target.group) if target.group else ''}; RBAC was asked as "
            "written.\n"
        )
    structured: dict[str, Any] = {
        "cluster": api.name,
        "allowed": allowed and denial is None,
        "allowedByCluster": allowed,
        "verb": verb,
        "namespace": namespace,
        **(
            {"path": target.path}
            if target.path
            else {
                "resource": target.resource,
                "group": target.group,
                "subresource": target.subresource,
                "name": name,
            }
        ),
    }
    if denial is not None:
        structured["deniedByServer"] = denial
    if status.get("reason"):
        structured["reason"] = status["reason"]
    return ToolOutput(text=text, structured=structured)


def _ssar(verb: str, target: Target, namespace: str | None, name: str | None) -> dict[str, Any]:
    spec: dict[str, Any]
    if target.path:
        spec = {"nonResourceAttributes": {"path": target.path, "verb": verb}}
    else:
        attrs = {
            "verb": verb,
            "group": target.group,
            "resource": target.resource,
            "subresource": target.subresource,
            "namespace": namespace or "",
            "name": name or "",
        }
        spec = {"resourceAttributes": {k: v for k, v in attrs.items() if v}}
    return {"apiVersion": REVIEW_API_VERSION, "kind": "SelfSubjectAccessReview", "spec": spec}


def _backend_denial(access: AccessPolicy, target: Target) -> str | None:
    # Reporting only: the refusal itself happens in the cluster session's access control.
    if target.path or target.resource == "*":
        return None
    return access.denial(target.group, target.resource)


async def _rules(ctx: ToolContext) -> ToolOutput:
    namespace = ctx.text("namespace", default=DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    api = await ctx.api()
    body = {
        "apiVersion": REVIEW_API_VERSION,
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    review = await api.call("POST", f"{AUTHZ}/selfsubjectrulesreviews", body=body)
    status = review.get("status") or {}
    resource_rules = status.get("resourceRules") or []
    url_rules = status.get("nonResourceRules") or []
    access = ctx.clusters.access
    rows = [["RESOURCES", "RESOURCE NAMES", "VERBS"]]
    denied_here: set[str] = set()
    for rule in resource_rules:
        names = []
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                shown = f"{resource}.{group}" if group else resource
                if resource != "*" and access.denial(group, resource) is not None:
                    denied_here.add(shown)
                    shown += " (denied here)"
                names.append(shown)
        rows.append(
            [
                ", ".join(names) or "<none>",
                ", ".join(rule.get("resourceNames") or []) or "[all]",
                ", ".join(rule.get("verbs") or []),
            ]
        )
    for rule in url_rules:
        rows.append(
            [
                ", ".join(rule.get("nonResourceURLs") or []),
                "[non-resource URL]",
                ", ".join(rule.get("verbs") or []),
            ]
        )
    text = (
        f"What you may do in namespace {namespace!r} on cluster {api.name!r} (the cluster's "
        "RBAC, as the API server reports it for your token):\n" + align(rows)
    )
    if denied_here:
        text += (
            "\n'(denied here)': RBAC allows it, but this server refuses that kind in every tool.\n"
        )
    if status.get("incomplete"):
        text += (
            "\nThe list is incomplete (the cluster uses an authorizer that cannot enumerate "
            "rules, e.g. a webhook): check a single action with verb and resource.\n"
        )
    if status.get("evaluationError"):
        text += f"Evaluation error reported by the API server: {status['evaluationError']}\n"
    text, cut = truncate(text, ctx.settings.output_max_chars, "Check single actions instead")
    structured: dict[str, Any] = {
        "cluster": api.name,
        "namespace": namespace,
        "resourceRules": resource_rules,
        "nonResourceRules": url_rules,
        "incomplete": bool(status.get("incomplete")),
        "deniedByServer": sorted(denied_here),
    }
    if cut:
        structured = {k: v for k, v in structured.items() if k not in ("resourceRules",)}
        structured["truncated"] = True
    return ToolOutput(text=text, structured=structured)


def tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            "can_i",
            "Check what you (the caller's own identity) may do on a cluster: with verb and "
            "resource, whether one action is allowed (like 'kubectl auth can-i'); without them, "
            "every rule you hold in a namespace (like 'kubectl auth can-i --list'). Kinds this "
            "server refuses whatever RBAC says are marked",
            {
                "verb": prop(
                    "string",
                    "Verb to check: get, list, watch, create, update, patch, delete, "
                    "deletecollection, or '*' (Optional; omit with resource to list the rules)",
                ),
                "resource": prop(
                    "string",
                    "Resource to check, as RBAC names it: 'pods', 'pods/log', "
                    "'deployments.apps', 'deployments.apps/scale' (a kind or short name works "
                    "too), or a non-resource URL such as '/healthz' (Optional)",
                ),
                "name": prop("string", "Name of one object to check (Optional)"),
                "namespace": prop(
                    "string",
                    "Namespace to check in (Optional; for one action, every namespace / "
                    "cluster scope when omitted; for the list of rules, 'default' when omitted)",
                ),
            },
            (),
            R_IDEMPOTENT,
            can_i,
            title="Access: Can I",
        )
    ]
