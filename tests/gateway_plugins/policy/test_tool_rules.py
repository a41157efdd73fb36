"""How review rules meet the tools' needs (pure logic; the real reviews are in test_rbac_list)."""

from __future__ import annotations

from typing import Any

from gateway_plugins.policy.tool_rules import TOOL_NEEDS, filter_tools, granted, parse_rules
from tests.gateway_plugins.policy.running import CHANGING_TOOLS, READ_ONLY_TOOLS

# What every authenticated user gets (system:basic-user), as the API server reports it.
BASIC = [
    {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    },
    {
        "verbs": ["create"],
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["selfsubjectreviews"],
    },
]


def _rules(*extra: dict[str, Any]) -> Any:
    return parse_rules({"resourceRules": [*BASIC, *extra]})


def test_every_catalogue_tool_of_the_backend_has_an_entry() -> None:
    assert set(READ_ONLY_TOOLS) | set(CHANGING_TOOLS) <= set(TOOL_NEEDS)


def test_self_reviews_alone_grant_only_the_tools_that_need_nothing() -> None:
    kept = filter_tools(sorted(TOOL_NEEDS), [_rules()])
    assert set(kept) == {"configuration_contexts_list", "configuration_view", "can_i"}


def test_argument_resource_tools_need_the_verb_on_some_resource() -> None:
    rules = _rules({"verbs": ["delete"], "apiGroups": ["batch"], "resources": ["jobs"]})
    assert granted("resources_delete", rules)
    assert not granted("resources_get", rules)
    assert not granted("pods_delete", rules)  # delete on jobs is not delete on pods


def test_wildcards_and_subresources_match_as_rbac_matches_them() -> None:
    star = _rules({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
    assert all(granted(t, star) for t in TOOL_NEEDS)
    exec_any = _rules({"verbs": ["create"], "apiGroups": [""], "resources": ["*/exec"]})
    assert granted("pods_exec", exec_any)
    pods_only = _rules({"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]})
    assert not granted("pods_exec", pods_only)  # pods is not pods/exec
    assert granted("pods_run", pods_only)
    wrong_group = _rules({"verbs": ["patch"], "apiGroups": ["extensions"], "resources": ["*"]})
    assert not granted("rollout_restart", wrong_group)
    assert granted("rollout_restart", _rules({"verbs": ["patch"], "apiGroups": ["apps"],
                                               "resources": ["statefulsets"]}))  # fmt: skip


def test_several_namespaces_keep_a_tool_any_of_them_grants() -> None:
    in_a = _rules({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]})
    in_b = _rules({"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]})
    assert filter_tools(["pods_list", "pods_delete", "pods_exec"], [in_a, in_b]) == [
        "pods_list",
        "pods_delete",
    ]


def test_unknown_tools_are_kept_and_malformed_rules_skipped() -> None:
    rules = parse_rules({"resourceRules": ["junk", {"verbs": "get"}, None]})
    assert granted("some_future_tool", rules)
    assert not granted("pods_get", rules)
