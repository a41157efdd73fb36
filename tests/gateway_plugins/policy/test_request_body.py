"""Reading the JSON-RPC request body of a check: method, names, arguments, and the headers that
must describe it (pure functions)."""

from __future__ import annotations

import json

import pytest

from gateway_plugins.policy import input as pi
from gateway_plugins.policy import request_body as rb


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_arguments_from_tools_call_body() -> None:
    arguments = {"namespace": "kube-system", "name": "p"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pods_exec", "arguments": arguments}}  # fmt: skip
    assert rb.arguments_from_body(json.dumps(body).encode()) == {
        "namespace": "kube-system",
        "name": "p",
    }
    assert rb.arguments_from_body(b"") is None
    no_args = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "pods_list"}}
    assert rb.arguments_from_body(json.dumps(no_args).encode()) == {}


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
        rb.arguments_from_body(body)


def test_request_body_gives_method_tool_and_arguments() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pods_exec", "arguments": {"namespace": "kube-system"}}}  # fmt: skip
    body = rb.parse_request_body(_body(call))
    assert body == rb.RequestBody(
        "tools/call", "pods_exec", {"namespace": "kube-system"}, request_id=1
    )
    ping = rb.parse_request_body(_body({"jsonrpc": "2.0", "id": "p-2", "method": "ping"}))
    assert ping == rb.RequestBody("ping", None, None, request_id="p-2")
    response = rb.parse_request_body(_body({"jsonrpc": "2.0", "id": 3, "result": {}}))
    assert response == rb.RequestBody(None, None, None, request_id=3)
    # Only strings and integers are ids worth echoing in an error answer.
    for odd in (None, True, 1.5, [1], {"a": 1}):
        notice = rb.parse_request_body(_body({"jsonrpc": "2.0", "id": odd, "method": "ping"}))
        assert notice.request_id is None, odd


def test_request_body_gives_the_prompt_of_prompts_get() -> None:
    get = {"jsonrpc": "2.0", "id": 9, "method": "prompts/get",
           "params": {"name": "cluster-health-check", "arguments": {"namespace": "x"}}}  # fmt: skip
    body = rb.parse_request_body(_body(get))
    assert body == rb.RequestBody("prompts/get", None, None, prompt="cluster-health-check",
                                  request_id=9)  # fmt: skip
    assert rb.reconcile_prompt("", body) == "cluster-health-check"
    assert rb.reconcile_prompt("cluster-health-check", body) == "cluster-health-check"
    with pytest.raises(rb.HeaderMismatch, match="x-mcp-promptname says other but the body"):
        rb.reconcile_prompt("other", body)
    with pytest.raises(pi.InputError, match=r"params\.name of the prompts/get body"):
        rb.parse_request_body(_body({**get, "params": {"name": "a b"}}))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON-RPC"),
        (b'[{"method": "tools/call"}]', "batches are not supported"),
        (b'{"method": 5}', "method of the JSON-RPC body must be a string"),
        (b'{"method": "tools/call"}', "JSON-RPC request with params"),
        (b'{"method": "tools/call", "params": {"name": "a b"}}', "params.name"),
        (b'{"method": "ping", "method": "tools/call", "params": {"name": "x"}}', "repeats the key"),
        (b'{"method": "tools/call", "params": {"name": "pods_list", "name": "pods_exec"}}',
         "repeats the key 'name'"),
    ],
)  # fmt: skip
def test_unusable_request_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(pi.InputError, match=message):
        rb.parse_request_body(body)


def test_headers_must_describe_the_body() -> None:
    delete = rb.RequestBody("tools/call", "resources_delete", {})
    with pytest.raises(
        rb.HeaderMismatch, match="x-mcp-method says ping but the body is a tools/call"
    ):
        rb.reconcile("ping", "", delete)
    with pytest.raises(
        rb.HeaderMismatch, match="x-mcp-toolname says pods_list but the body calls resources_delete"
    ):
        rb.reconcile("tools/call", "pods_list", delete)
    with pytest.raises(rb.HeaderMismatch, match="body is a JSON-RPC message without a method"):
        rb.reconcile("initialize", "", rb.RequestBody(None, None, None))
    with pytest.raises(rb.HeaderMismatch, match=r"says \?\?evil but"):
        rb.reconcile('"\x07evil', "", delete)  # quote and control character made safe
    # Missing headers take the body's values; agreeing headers pass through.
    assert rb.reconcile("", "", delete) == ("tools/call", "resources_delete")
    assert rb.reconcile("tools/call", "resources_delete", delete) == (
        "tools/call",
        "resources_delete",
    )
    # The router's initialize on behalf of a call names the tool in the header only.
    initialize = rb.RequestBody("initialize", None, None)
    assert rb.reconcile("initialize", "pods_list", initialize) == ("initialize", "pods_list")
