"""Building the policy input from gateway headers and bodies (pure functions)."""

from __future__ import annotations

import json

import pytest

from gateway_plugins.policy import input as pi
from gateway_plugins.policy import request_body as rb


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
                         arguments={"a": 1})["arguments"] == {}  # fmt: skip


def test_claims_projection_keeps_the_issuer() -> None:
    claims = {"iss": "https://idp.example/realms/a", "sub": "s", "email": "a@b", "jti": "j"}
    assert pi.policy_claims(claims) == {"iss": "https://idp.example/realms/a", "sub": "s"}


def test_arguments_projection_keeps_only_what_the_policy_reads() -> None:
    secret = "apiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2\n"
    arguments = {
        "namespace": "default",
        "all_namespaces": True,
        "name": "db",
        "access_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig",
        "resource": secret,
        "command": ["sh", "-c", "cat /etc/shadow"],
    }
    doc = pi.call_input(method="tools/call", server="x/y", tool="resources_create_or_update",
                        annotations={}, claims={}, arguments=arguments)  # fmt: skip
    assert doc["arguments"] == {"namespace": "default", "all_namespaces": True}
    text = json.dumps(doc)
    assert "hunter2" not in text
    assert "eyJhbGciOiJSUzI1NiJ9" not in text
    assert "access_token" not in pi.POLICY_ARGUMENTS
    # Values of another type are left out (the policy only acts on a string and on true).
    assert pi.policy_arguments({"namespace": None, "all_namespaces": "yes"}) == {}


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


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


# -- issue 14 item 5: names are full matches ----------------------------------------------------
# With re.match and a pattern ending in "$", a final newline passed ("$" also matches before it):
# "kube-system\n" was a valid namespace for the input check and, not being "kube-system", got past
# the namespace rule's denied list. Each look-alike below must be refused, not normalized.
LOOKALIKE_NAMESPACES = [
    "kube-system\n",  # the finding
    "kube-system\r\n",
    "kube-system\r",
    "\nkube-system",
    "kube-system\n\n",
    "kube-system ",
    " kube-system",
    "kube-system\t",
    "kube-system\x00",
    "kube-system\x0b",
    "kube-system\u2028",  # line separator
    "kube-system\u200b",  # zero-width space
    "kube\u2011system",  # non-breaking hyphen
    "kube\u2010system",  # hyphen
    "\uff4bube-system",  # fullwidth k
    "kube-syste\u0307m",  # combining dot
    "KUBE-SYSTEM",
    "kube-system.",
]


@pytest.mark.parametrize("namespace", LOOKALIKE_NAMESPACES)
def test_namespace_lookalikes_are_refused(namespace: str) -> None:
    with pytest.raises(pi.InputError, match="not a valid Kubernetes namespace name"):
        pi.check_arguments({"namespace": namespace, "name": "p"})
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pods_exec", "arguments": {"namespace": namespace}}}  # fmt: skip
    with pytest.raises(pi.InputError, match="namespace"):
        rb.arguments_from_body(_body(call))
    with pytest.raises(pi.InputError, match="namespace"):
        rb.parse_request_body(_body(call))


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " ", "\u2028"])
def test_tool_prompt_and_server_names_with_a_trailing_newline_are_refused(suffix: str) -> None:
    with pytest.raises(pi.InputError, match="not a valid MCP tool name"):
        pi.check_tool_name("pods_exec" + suffix)
    with pytest.raises(pi.InputError, match="not a valid MCP prompt name"):
        pi.check_prompt_name("cluster-health-check" + suffix)
    with pytest.raises(pi.InputError, match="x-mcp-servername"):
        pi.check_server_name("mcp-test/kubernetes-mcp" + suffix)
    for method in ("tools/call", "prompts/get"):
        body = {"jsonrpc": "2.0", "id": 1, "method": method,
                "params": {"name": "pods_exec" + suffix}}  # fmt: skip
        with pytest.raises(pi.InputError, match=r"params\.name"):
            rb.parse_request_body(_body(body))
    # A catalogue entry named so is dropped, not listed under a name the policy never grants.
    tools = [{"name": "pods_list" + suffix}, {"name": "pods_get"}]
    assert [t["name"] for t in pi.catalogue_from_tools(tools)] == ["pods_get"]


def test_the_genuine_names_still_pass() -> None:
    assert pi.check_arguments({"namespace": "kube-system"}) == {"namespace": "kube-system"}
    assert pi.check_tool_name("pods_exec") == "pods_exec"
    assert pi.check_prompt_name("cluster-health-check") == "cluster-health-check"
    assert pi.check_server_name("mcp-test/kubernetes-mcp") == "mcp-test/kubernetes-mcp"
