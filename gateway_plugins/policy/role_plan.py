"""The sync-roles planner (pure): a backend's tools → the roles its Keycloak client should hold →
the changes to make (:class:`Plan`).

One role per tool (``pods_list``, or ``tool:pods_list`` with a prefix) with a description and
attributes saying it is managed by ``mcp-policy`` and whether the tool is read-only; composite
``read-only`` (exactly the read-only tools) and ``all``. A second plan over the result is empty;
roles of vanished tools are deleted only with ``prune`` and only when ``mcp-policy`` made them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_plugins.policy.input import normalize_annotations

MANAGED = "mcp-policy.managed"
TOOL_ATTR = "mcp-policy.tool"
READ_ONLY_ATTR = "mcp-policy.read-only"
_MAX_DESCRIPTION = 255


class SyncError(Exception):
    """Sync cannot proceed; the message says what failed and what to do (never a secret)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class RoleSpec:
    """A role as it should be. ``composites`` is None for a plain role."""

    name: str
    description: str
    attributes: dict[str, list[str]]
    composites: frozenset[str] | None = None


@dataclass(frozen=True)
class ExistingRole:
    name: str
    description: str
    attributes: dict[str, list[str]]
    composites: frozenset[str] = frozenset()
    id: str = ""

    @property
    def managed(self) -> bool:
        return self.attributes.get(MANAGED) == ["true"]


@dataclass
class Plan:
    """What a sync would change."""

    create: list[RoleSpec] = field(default_factory=list)
    update: list[tuple[RoleSpec, list[str]]] = field(default_factory=list)
    add_composites: dict[str, set[str]] = field(default_factory=dict)
    remove_composites: dict[str, set[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # would be deleted with prune

    @property
    def empty(self) -> bool:
        return not (
            self.create
            or self.update
            or self.add_composites
            or self.remove_composites
            or self.delete
        )

    def describe(self) -> list[str]:
        lines = [f"+ create role {r.name}" for r in self.create]
        lines += [f"~ update role {r.name}: {', '.join(changes)}" for r, changes in self.update]
        for role, names in sorted(self.add_composites.items()):
            lines += [f"+ composite {role} includes {n}" for n in sorted(names)]
        for role, names in sorted(self.remove_composites.items()):
            lines += [f"- composite {role} drops {n}" for n in sorted(names)]
        lines += [f"- delete role {name}" for name in self.delete]
        lines += [
            f"! role {name} names no current tool (kept; --prune removes it)" for name in self.stale
        ]
        return lines or ["no changes"]

    def as_json(self) -> dict[str, Any]:
        return {
            "create": [r.name for r in self.create],
            "update": {r.name: changes for r, changes in self.update},
            "add_composites": {k: sorted(v) for k, v in sorted(self.add_composites.items())},
            "remove_composites": {k: sorted(v) for k, v in sorted(self.remove_composites.items())},
            "delete": list(self.delete),
            "stale": list(self.stale),
        }


def tools_from_list(tools: Iterable[Mapping[str, Any]]) -> list[ToolSpec]:
    """MCP ``tools/list`` entries → tool specs (read-only from ``annotations.readOnlyHint``)."""
    specs: dict[str, ToolSpec] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            continue
        raw = tool.get("annotations")
        annotations = normalize_annotations(raw if isinstance(raw, Mapping) else None)
        description = tool.get("description")
        specs[name] = ToolSpec(
            name,
            description if isinstance(description, str) else "",
            annotations.get("readOnly") is True,
        )
    return [specs[name] for name in sorted(specs)]


def _summary(text: str) -> str:
    first = text.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    return first


def desired_roles(
    tools: Iterable[ToolSpec],
    *,
    prefix: str = "",
    read_only_role: str = "read-only",
    all_role: str = "all",
) -> dict[str, RoleSpec]:
    """The roles a client should hold for ``tools``."""
    roles: dict[str, RoleSpec] = {}
    read_only: set[str] = set()
    everything: set[str] = set()
    for tool in tools:
        name = f"{prefix}{tool.name}"
        kind = "read-only tool" if tool.read_only else "tool that may change the cluster"
        summary = _summary(tool.description)
        description = f"MCP tool {tool.name} ({kind})" + (f": {summary}" if summary else "")
        roles[name] = RoleSpec(
            name,
            description[:_MAX_DESCRIPTION],
            {
                MANAGED: ["true"],
                TOOL_ATTR: [tool.name],
                READ_ONLY_ATTR: ["true" if tool.read_only else "false"],
            },
        )
        everything.add(name)
        if tool.read_only:
            read_only.add(name)
    for composite, members, text in (
        (read_only_role, read_only, "every read-only MCP tool of this server"),
        (all_role, everything, "every MCP tool of this server"),
    ):
        if composite in roles:
            raise SyncError(f"a tool is named like the composite role {composite!r}; rename one")
        roles[composite] = RoleSpec(
            composite, f"Composite: {text}", {MANAGED: ["true"]}, frozenset(members)
        )
    return roles


def plan_sync(
    desired: Mapping[str, RoleSpec], existing: Mapping[str, ExistingRole], *, prune: bool = False
) -> Plan:
    """The changes that make ``existing`` match ``desired`` (pure)."""
    plan = Plan()
    for name, want in sorted(desired.items()):
        have = existing.get(name)
        if have is None:
            plan.create.append(want)
        else:
            changes = []
            if have.description != want.description:
                changes.append("description")
            if any(have.attributes.get(k) != v for k, v in want.attributes.items()):
                changes.append("attributes")
            if changes:
                plan.update.append((want, changes))
        if want.composites is not None:
            current = have.composites if have is not None else frozenset()
            missing = set(want.composites - current)
            extra = set(current - want.composites)
            if missing:
                plan.add_composites[name] = missing
            if extra:
                plan.remove_composites[name] = extra
    for name, have in sorted(existing.items()):
        if name in desired or not have.managed:
            continue
        (plan.delete if prune else plan.stale).append(name)
    return plan
