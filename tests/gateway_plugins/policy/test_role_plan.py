"""The sync-roles planner (pure): desired roles from tools/list, the difference to Keycloak."""

from __future__ import annotations

import pytest

from gateway_plugins.policy.role_plan import (
    MANAGED,
    ExistingRole,
    SyncError,
    desired_roles,
    plan_sync,
    tools_from_list,
)

TOOLS = tools_from_list(
    [
        {
            "name": "pods_list",
            "description": "List pods.\n\nMore text.",
            "annotations": {"readOnlyHint": True},
        },
        {"name": "pods_delete", "annotations": {"readOnlyHint": False, "destructiveHint": True}},
        {"name": "helm_list", "annotations": {"readOnlyHint": True}},
        {"name": "bad"},
        {"description": "no name"},
    ]
)


def _as_existing(desired: dict[str, object]) -> dict[str, ExistingRole]:
    out = {}
    for name, spec in desired.items():
        out[name] = ExistingRole(
            name,
            spec.description,  # type: ignore[attr-defined]
            dict(spec.attributes),  # type: ignore[attr-defined]
            spec.composites or frozenset(),  # type: ignore[attr-defined]
        )
    return out


def test_tools_from_list_reads_names_and_read_only_hints() -> None:
    assert [(t.name, t.read_only) for t in TOOLS] == [
        ("bad", False),
        ("helm_list", True),
        ("pods_delete", False),
        ("pods_list", True),
    ]


def test_desired_roles_one_per_tool_plus_composites() -> None:
    roles = desired_roles(TOOLS, prefix="tool:")
    assert set(roles) == {"tool:bad", "tool:helm_list", "tool:pods_delete", "tool:pods_list",
                          "read-only", "all"}  # fmt: skip
    assert roles["read-only"].composites == {"tool:helm_list", "tool:pods_list"}
    assert roles["all"].composites == {"tool:bad", "tool:helm_list", "tool:pods_delete",
                                       "tool:pods_list"}  # fmt: skip
    assert roles["tool:pods_list"].description == "MCP tool pods_list (read-only tool): List pods."
    assert roles["tool:pods_list"].attributes[MANAGED] == ["true"]
    assert roles["tool:pods_delete"].composites is None


def test_first_plan_creates_everything_second_plans_nothing() -> None:
    desired = desired_roles(TOOLS)
    first = plan_sync(desired, {})
    assert sorted(r.name for r in first.create) == sorted(desired)
    assert first.add_composites["read-only"] == {"helm_list", "pods_list"}
    second = plan_sync(desired, _as_existing(desired))  # type: ignore[arg-type]
    assert second.empty
    assert second.describe() == ["no changes"]


def test_existing_unmanaged_roles_get_adopted_and_composites_corrected() -> None:
    desired = desired_roles(TOOLS)
    existing = _as_existing(desired)  # type: ignore[arg-type]
    existing["pods_list"] = ExistingRole("pods_list", "hand-made", {})
    existing["read-only"] = ExistingRole(
        "read-only", desired["read-only"].description, {MANAGED: ["true"]},
        frozenset({"pods_list", "pods_delete"}),
    )  # fmt: skip
    plan = plan_sync(desired, existing)
    assert [(r.name, changes) for r, changes in plan.update] == [
        ("pods_list", ["description", "attributes"])
    ]
    assert plan.add_composites == {"read-only": {"helm_list"}}
    assert plan.remove_composites == {"read-only": {"pods_delete"}}
    assert "- composite read-only drops pods_delete" in plan.describe()


def test_roles_of_removed_tools_are_deleted_only_with_prune_and_only_if_managed() -> None:
    desired = desired_roles(TOOLS)
    existing = _as_existing(desired)  # type: ignore[arg-type]
    existing["old_tool"] = ExistingRole("old_tool", "x", {MANAGED: ["true"]})
    existing["uma_protection"] = ExistingRole("uma_protection", "Keycloak's own", {})
    kept = plan_sync(desired, existing)
    assert kept.stale == ["old_tool"]
    assert kept.delete == []
    assert kept.empty
    pruned = plan_sync(desired, existing, prune=True)
    assert pruned.delete == ["old_tool"]
    assert not pruned.empty


def test_tool_named_like_a_composite_is_refused() -> None:
    with pytest.raises(SyncError, match="composite role 'all'"):
        desired_roles(tools_from_list([{"name": "all"}]))
