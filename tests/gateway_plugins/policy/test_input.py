"""Building the policy input from gateway headers and bodies (pure functions)."""

from __future__ import annotations

import json

import pytest

from gateway_plugins.policy import input as pi


def test_annotation_hints_parse_true_and_false_only() -> None:
    hints = pi.parse_annotation_hints(
        "readOnly=true, destructive=false,idempotent=unspecified,openWorld=TRUE,bogus=true"
    )
    assert hints == {"readOnly": True, "destructive": False, "openWorld": True}
    assert pi.parse_annotation_hints(None) == {}
    assert pi.parse_annotation_hints("readOnly") == {}


def test_mcp_annotations_normalize_to_policy_keys() -> None:
    raw = {"readOnlyHint": True, "destructiveHint": "yes", "title": "x", "openWorldHint": False}
    assert pi.normalize_annotations(raw) == {"readOnly": True, "openWorld": False}


@pytest.mark.parametrize("name", ["pods_list", "a.b-c_d", "x" * 128])
def test_valid_tool_names(name: str) -> None:
    assert pi.check_tool_name(name) == name


@pytest.mark.parametrize("name", ["", "pods list", 'a"b', "x" * 129, "a\\b", "ünï"])
def test_invalid_tool_names_are_refused(name: str) -> None:
    with pytest.raises(pi.InputError, match="not a valid MCP tool name"):
        pi.check_tool_name(name)


@pytest.mark.parametrize("name", ["mcp-test/kubernetes-mcp", "mcpBroker", "ns/name.v2"])
def test_valid_server_names(name: str) -> None:
    assert pi.check_server_name(name) == name


@pytest.mark.parametrize("name", ["", "/x", "a/b/c", 'a/"b', "a b"])
def test_invalid_server_names_are_refused(name: str) -> None:
    with pytest.raises(pi.InputError, match="x-mcp-servername"):
        pi.check_server_name(name)


def test_arguments_from_tools_call_body() -> None:
    arguments = {"namespace": "kube-system", "name": "p"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pods_exec", "arguments": arguments}}  # fmt: skip
    assert pi.arguments_from_body(json.dumps(body).encode()) == {
        "namespace": "kube-system",
        "name": "p",
    }
    assert pi.arguments_from_body(b"") is None
    no_args = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "pods_list"}}
    assert pi.arguments_from_body(json.dumps(no_args).encode()) == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON-RPC"),
        (b"[1, 2]", "JSON-RPC request with params"),
        (b'{"params": {"arguments": [1]}}', "must be a JSON object"),
        (b'{"params": {"arguments": {"namespace": "Kube_System"}}}', "namespace"),
        (b'{"params": {"arguments": {"namespace": 7}}}', "namespace"),
    ],
)
def test_unreadable_bodies_are_refused_not_skipped(body: bytes, message: str) -> None:
    with pytest.raises(pi.InputError, match=message):
        pi.arguments_from_body(body)


def test_call_input_keeps_only_policy_claims_and_a_safe_name() -> None:
    claims = {
        "preferred_username": 'ev"il\nname',
        "sub": "s",
        "email": "a@b",
        "resource_access": {"x/y": {"roles": ["pods_list"]}},
        "groups": ["/g"],
    }
    doc = pi.call_input(method="tools/call", server="x/y", tool="pods_list",
                        annotations={"readOnly": True}, claims=claims, arguments=None)  # fmt: skip
    assert doc["claims"] == {
        "sub": "s",
        "preferred_username": 'ev"il\nname',
        "resource_access": {"x/y": {"roles": ["pods_list"]}},
        "groups": ["/g"],
    }
    assert doc["subject"] == {"name": "ev?il?name"}
    assert "arguments" not in doc
    assert pi.call_input(method="tools/call", server="x/y", tool="t", annotations={}, claims={},
                         arguments={"a": 1})["arguments"] == {"a": 1}  # fmt: skip


def test_catalogue_normalizes_mcp_tools_and_drops_bad_names() -> None:
    doc = {
        "ns/a": [
            {"name": "pods_list", "annotations": {"readOnlyHint": True}},
            {"name": "bad name"},
            {"name": "pods_list", "annotations": {"readOnlyHint": True}},
        ],
        "ns/b": {"tools": [{"name": "helm_list", "annotations": {"readOnly": True}}]},
    }
    catalogue = pi.load_catalogue(doc)
    assert catalogue == {
        "ns/a": [{"name": "pods_list", "annotations": {"readOnly": True}}],
        "ns/b": [{"name": "helm_list", "annotations": {"readOnly": True}}],
    }
    assert pi.annotations_in(catalogue, "ns/a", "pods_list") == {"readOnly": True}
    assert pi.annotations_in(catalogue, "ns/a", "nope") == {}
    with pytest.raises(pi.InputError, match="must be a list"):
        pi.load_catalogue({"ns/a": 3})


def test_allowed_lists_are_never_null() -> None:
    assert pi.normalize_allowed({"ns/a": None, "ns/b": ["z", "a", "a"]}, ["ns/c"]) == {
        "ns/c": [],
        "ns/a": [],
        "ns/b": ["a", "z"],
    }
