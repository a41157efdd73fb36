"""The label selector query of workload_diagnose and the rollout tools."""

from __future__ import annotations

from mcp_backend.kube.label_selector import selector_query


def test_every_operator_is_written_and_labels_are_sorted() -> None:
    selector = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "canary", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    assert selector_query(selector) == "a=1,b=2,tier in (web,api),env notin (dev),canary,!legacy"


def test_an_empty_selector_selects_by_nothing() -> None:
    assert selector_query({}) == ""
