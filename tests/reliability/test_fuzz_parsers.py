"""Property-based tests (hypothesis) of the three services' request parsers, the pure ones: any
input gives a result or the parser's own clear error, never another exception (deep nesting
too). The HTTP endpoints of the real services: ``test_fuzz_plugin_endpoints.py`` and
``test_fuzz_backend_tools.py``; strategies and checks: ``fuzzing.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway_plugins.common.jwt_validation import looks_like_jwt
from gateway_plugins.policy.input import (
    InputError,
    check_arguments,
    check_server_name,
    check_tool_name,
    parse_annotation_hints,
)
from gateway_plugins.policy.request_body import arguments_from_body
from kmg_common.bearer import bearer_token
from mcp_backend.errors import ToolFailure
from mcp_backend.operations.apply import parse_manifests
from mcp_backend.transport.auth import extract_token
from tests.reliability.fuzzing import (
    DEEP_JSON,
    DEEP_YAML,
    LOOKALIKE_EXAMPLES,
    PURE,
    header_text,
    is_label,
    json_values,
    namespace_lookalikes,
)

pytestmark = pytest.mark.timeout(900)


# -- pure parsers ------------------------------------------------------------------------------
def _outcome(parse: Any, value: Any, expected: type[Exception]) -> Any:
    """The parser's result, or "error with a message" for its own error type (any other
    exception propagates and fails the test)."""
    try:
        return parse(value)
    except expected as exc:
        if not str(exc) and not getattr(exc, "message", ""):
            return "error without a message"
        return "error with a message"


@PURE
@given(st.text(max_size=400))
def test_looks_like_jwt_never_raises(text: str) -> None:
    assert looks_like_jwt(text) in (True, False)


@PURE
@given(st.one_of(st.none(), st.text(max_size=300)))
@example("Bearer ")
@example("bearer\ttoken")
@example("Basic abc")
def test_bearer_token_parsing(header: str | None) -> None:
    token = bearer_token(header)
    if token is not None:
        assert token
        assert token == token.strip()
        assert header is not None
        assert header.strip().lower().startswith("bearer")


@PURE
@given(st.dictionaries(st.sampled_from(["authorization", "kubernetes-authorization", "x"]),
                       st.text(max_size=200)))  # fmt: skip
def test_backend_token_extraction(headers: dict[str, str]) -> None:
    token = extract_token(headers)
    assert token is None or (token and token == token.strip())


@PURE
@given(st.one_of(st.none(), header_text))
@example("readOnly=true,destructive=TRUE,readOnly=maybe,=,,,openWorld")
def test_annotation_hints_are_booleans_of_known_keys(header: str | None) -> None:
    hints = parse_annotation_hints(header)
    assert set(hints) <= {"readOnly", "destructive", "idempotent", "openWorld"}
    assert all(isinstance(v, bool) for v in hints.values())


@PURE
@given(st.text(max_size=200))
@example("pods_exec\n")
@example("mcp-test/kubernetes-mcp\n")
@example("pods_exec\u2028")
def test_tool_and_server_name_checks(name: str) -> None:
    for check in (check_tool_name, check_server_name):
        outcome = _outcome(check, name, InputError)
        assert outcome in (name, "error with a message")
        if outcome == name:  # an accepted name is printable ASCII without spaces (full match)
            assert name.isascii(), repr(name)
            assert name.isprintable(), repr(name)
            assert " " not in name, repr(name)


@PURE
@given(namespace_lookalikes)
def test_namespace_check_accepts_only_namespace_names(namespace: str) -> None:
    for example_ in LOOKALIKE_EXAMPLES:  # the findings, every run
        assert _outcome(check_arguments, {"namespace": example_}, InputError) != {
            "namespace": example_
        }, repr(example_)
    outcome = _outcome(check_arguments, {"namespace": namespace}, InputError)
    if namespace == "" or is_label(namespace):
        assert outcome == {"namespace": namespace}
    else:
        assert outcome == "error with a message", repr(namespace)


@PURE
@given(json_values)
def test_check_arguments(arguments: Any) -> None:
    outcome = _outcome(check_arguments, arguments, InputError)
    assert outcome == "error with a message" or isinstance(outcome, dict)


@PURE
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
@example(b'{"params":{"arguments":{"namespace":"kube-system/../x"}}}')
@example(b'{"params":{"arguments":{"namespace":"kube-system\\n"}}}')
@example(b'{"params":{"arguments":{"namespace":"kube-system\\u2028"}}}')
@example(b"\xff\xfe")
def test_policy_body_parser_raises_only_input_errors(body: bytes) -> None:
    outcome = _outcome(arguments_from_body, body, InputError)
    assert outcome is None or outcome == "error with a message" or isinstance(outcome, dict)
    if isinstance(outcome, dict) and isinstance(outcome.get("namespace"), str):
        namespace = outcome["namespace"]
        assert namespace == "" or is_label(namespace), repr(namespace)


@PURE
@given(st.text(max_size=400))
@example("!!python/object/apply:os.system ['true']")
@example("a: &a [*a]")
@example("kind: List\nitems: 5\n")
@example("apiVersion: v1\nkind: 7\nmetadata: {name: x}\n")
def test_manifest_parser_raises_only_tool_failures(text: str) -> None:
    outcome = _outcome(parse_manifests, text, ToolFailure)
    if outcome != "error with a message":
        assert outcome
        assert all(isinstance(o, dict) for o in outcome)


# -- deep nesting, explicitly (hypothesis rarely builds 1000+ levels) ----------------------------
def test_policy_body_parser_deeply_nested_json() -> None:
    with pytest.raises(InputError):
        arguments_from_body(DEEP_JSON)


def test_manifest_parser_deeply_nested_yaml() -> None:
    with pytest.raises(ToolFailure):
        parse_manifests(DEEP_YAML)
