"""What each catalogue tool needs of the cluster's RBAC, and whether review rules grant it.

Used by the RBAC-aware ``tools/list`` (:mod:`gateway_plugins.policy.rbac_list`): a tool stays in a
user's list when the rules a SelfSubjectRulesReview returned for the user's own token grant every
*need* of the tool, a need being met by any one of its alternatives (``Permission``).

Rules of the table (derived from what each backend tool asks the API server):

* a tool on a fixed resource needs that verb on it: ``pods_list`` → ``list`` ``pods``,
  ``pods_exec`` → ``create`` ``pods/exec``, ``nodes_log`` → ``get`` ``nodes/proxy``;
* a tool whose resource is an argument (``resources_*``, ``workload_diagnose``) needs its verb
  on *some* resource (``ANY``): the list cannot know which resource the agent will name, so the
  tool is kept when the user may do the verb on anything at all, and dropped when the user may
  never do it (a view-only user loses ``resources_delete`` but keeps ``resources_get``); the
  self reviews every authenticated user may create (``selfsubjectaccessreviews``, ...) do not
  count as "anything";
* rollout and helm tools need the verb on one of the resources they work on (Deployments,
  StatefulSets or DaemonSets; helm's release Secrets);
* tools that touch no cluster object (``configuration_*``, ``can_i``: every authenticated user
  may create self reviews) need nothing, and a tool the table does not know is kept: the filter
  only removes tools it can show are useless.

Rules are read as RBAC matches them: ``*`` in verbs, apiGroups or resources matches everything,
``*/<sub>`` matches that subresource of any resource; a rule limited to ``resourceNames`` still
counts (the user may use the tool on those objects).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANY = "*"  # a need on whatever resource the agent names


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (``group`` "" is the core group; ``resource`` may name a
    subresource as ``pods/exec``), or the verb on any resource (``resource == ANY``)."""

    verb: str
    resource: str
    group: str = ""


Need = tuple[Permission, ...]  # met by any one of these
# What every authenticated user may create (system:basic-user): asking about oneself is not
# a grant on "some resource", so these never count for a need on ANY resource.
SELF_REVIEWS = frozenset(
    {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"}
)

WORKLOADS = ("deployments", "statefulsets", "daemonsets")


def _one(verb: str, resource: str, group: str = "") -> tuple[Need, ...]:
    return ((Permission(verb, resource, group),),)


def _any_of(verbs: Sequence[str], resources: Sequence[str], group: str = "") -> Need:
    return tuple(Permission(v, r, group) for v in verbs for r in resources)


def _on_anything(*verbs: str) -> tuple[Need, ...]:
    return (tuple(Permission(v, ANY) for v in verbs),)


TOOL_NEEDS: Mapping[str, tuple[Need, ...]] = {
    "configuration_contexts_list": (),
    "configuration_view": (),
    "can_i": (),
    "namespaces_list": _one("list", "namespaces"),
    "events_list": ((Permission("list", "events"), Permission("list", "events", "events.k8s.io")),),
    "pods_list": _one("list", "pods"),
    "pods_list_in_namespace": _one("list", "pods"),
    "pods_get": _one("get", "pods"),
    "pods_log": _one("get", "pods/log"),
    "pods_top": _one("list", "pods", "metrics.k8s.io"),
    "pods_delete": _one("delete", "pods"),
    "pods_run": _one("create", "pods"),
    "pods_exec": _one("create", "pods/exec"),
    "nodes_top": _one("list", "nodes", "metrics.k8s.io"),
    "nodes_log": _one("get", "nodes/proxy"),
    "nodes_stats_summary": _one("get", "nodes/proxy"),
    "resources_list": _on_anything("list"),
    "resources_get": _on_anything("get"),
    "resources_create_or_update": _on_anything("create", "patch", "update"),
    "resources_delete": _on_anything("delete"),
    "resources_scale": _on_anything("patch", "update"),
    "workload_diagnose": _on_anything("get"),
    "rollout_status": (_any_of(("get",), WORKLOADS, "apps"),),
    "rollout_history": (_any_of(("list",), ("replicasets", "controllerrevisions"), "apps"),),
    "rollout_restart": (_any_of(("patch",), WORKLOADS, "apps"),),
    "rollout_undo": (_any_of(("patch",), WORKLOADS, "apps"),),
    "helm_list": _one("list", "secrets"),
    "helm_status": _one("get", "secrets"),
    "helm_history": _one("list", "secrets"),
    "helm_install": _one("create", "secrets"),
    "helm_upgrade": _one("create", "secrets"),
    "helm_rollback": _one("create", "secrets"),
    "helm_uninstall": _one("delete", "secrets"),
}


@dataclass(frozen=True)
class Rule:
    """One ``resourceRules`` entry of a SelfSubjectRulesReview status."""

    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]

    def allows(self, wanted: Permission) -> bool:
        if "*" not in self.verbs and wanted.verb not in self.verbs:
            return False
        if wanted.resource == ANY:
            return not self.resources <= SELF_REVIEWS
        if "*" not in self.groups and wanted.group not in self.groups:
            return False
        if "*" in self.resources or wanted.resource in self.resources:
            return True
        _, slash, sub = wanted.resource.partition("/")
        return bool(slash) and f"*/{sub}" in self.resources


def parse_rules(status: Mapping[str, Any]) -> tuple[Rule, ...]:
    """The resource rules of a review's ``status`` (malformed entries are skipped)."""
    rules: list[Rule] = []
    for entry in status.get("resourceRules") or ():
        if not isinstance(entry, Mapping):
            continue
        rules.append(
            Rule(
                verbs=_strings(entry.get("verbs")),
                groups=_strings(entry.get("apiGroups")),
                resources=_strings(entry.get("resources")),
            )
        )
    return tuple(rules)


def _strings(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


def granted(tool: str, rules: Iterable[Rule]) -> bool:
    """True when ``rules`` meet every need of ``tool`` (unknown tools: True)."""
    needs = TOOL_NEEDS.get(tool)
    if not needs:
        return True
    kept = tuple(rules)
    return all(any(rule.allows(p) for p in need for rule in kept) for need in needs)


def filter_tools(tools: Iterable[str], rule_sets: Sequence[tuple[Rule, ...]]) -> list[str]:
    """The tools some rule set (one per reviewed namespace) grants."""
    return [t for t in tools if any(granted(t, rules) for rules in rule_sets)]
