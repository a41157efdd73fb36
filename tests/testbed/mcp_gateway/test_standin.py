"""The router/broker stand-in's pure logic: JSON-RPC parsing, the x-mcp-* headers, and tools/list
filtering by the signed header. Headers are signed by the policy service's real signer with real
ES256 keys; forged ones by another real key or algorithm."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_plugins.policy.wristband import WristbandForm, WristbandSigner
from tests.testbed.mcp_gateway.broker import (
    Broker,
    HeaderInvalid,
    allowed_from_header,
    filter_tools,
    filtered_message,
)
from tests.testbed.mcp_gateway.config import (
    BROKER_SERVER_NAME,
    Catalogue,
    GatewayConfig,
    Listen,
    Server,
    annotation_hints,
)
from tests.testbed.mcp_gateway.router import (
    InvalidRequest,
    Parsed,
    headers_for,
    parse_body,
    sse_messages,
)

SERVER = "mcp-test/kubernetes-mcp"
TOOLS: list[dict[str, Any]] = [
    {"name": "pods_list", "annotations": {"readOnlyHint": True, "destructiveHint": False}},
    {
        "name": "pods_delete",
        "annotations": {
            "readOnlyHint": False,
            "destructiveHint": True,
            "idempotentHint": True,
            "openWorldHint": True,
        },
    },
    {"name": "namespaces_list"},
]


def _rpc(method: str, **extra: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, **extra}).encode()


# -- router -------------------------------------------------------------------------------------
def test_tools_call_is_routed_to_the_owning_server_with_hints() -> None:
    catalogue = Catalogue()
    catalogue.learn(SERVER, TOOLS)
    parsed = parse_body(_rpc("tools/call", params={"name": "pods_delete", "arguments": {}}))
    assert parsed == Parsed(method="tools/call", tool="pods_delete")
    assert headers_for(parsed, catalogue) == {
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_delete",
        "x-mcp-annotation-hints": "readOnly=false,destructive=true,idempotent=true,openWorld=true",
    }
    # A tool without annotations gets no hints header (upstream sets it only when known).
    plain = headers_for(
        parse_body(_rpc("tools/call", params={"name": "namespaces_list"})), catalogue
    )
    assert plain["x-mcp-servername"] == SERVER
    assert "x-mcp-annotation-hints" not in plain


def test_other_methods_and_unknown_tools_go_to_the_broker() -> None:
    catalogue = Catalogue()
    catalogue.learn(SERVER, TOOLS)
    assert headers_for(parse_body(_rpc("tools/list")), catalogue) == {
        "x-mcp-method": "tools/list",
        "x-mcp-servername": BROKER_SERVER_NAME,
    }
    init = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    assert headers_for(parse_body(init), catalogue)["x-mcp-method"] == "notifications/initialized"
    unknown = headers_for(parse_body(_rpc("tools/call", params={"name": "nope"})), catalogue)
    assert unknown["x-mcp-servername"] == BROKER_SERVER_NAME
    assert unknown["x-mcp-toolname"] == "nope"
    assert headers_for(parse_body(b""), catalogue) == {"x-mcp-servername": BROKER_SERVER_NAME}


def test_a_client_answer_to_a_server_request_is_routed_without_a_method() -> None:
    answer = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"action": "accept"}}).encode()
    assert parse_body(answer) == Parsed(method=None, tool=None)


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (b"{not json", -32700, "not valid JSON"),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, "batches"),
        (b'"ping"', -32600, "JSON-RPC object"),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', -32600, '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc":"2.0","id":1}', -32600, "no method"),
        (b'{"jsonrpc":"2.0","method":"tools/list"}', -32600, "no id"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', -32602, "no tool name"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}', -32602, "tool"),
    ],
)
def test_malformed_requests_are_refused_with_a_clear_reason(
    body: bytes, code: int, says: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_body(body)
    assert err.value.code == code
    assert says in err.value.message


def test_annotation_hints_use_the_upstream_order_and_spelling() -> None:
    assert annotation_hints({}) == (
        "readOnly=unspecified,destructive=unspecified,idempotent=unspecified,openWorld=unspecified"
    )
    assert annotation_hints({"readOnlyHint": True, "openWorldHint": "yes"}) == (
        "readOnly=true,destructive=unspecified,idempotent=unspecified,openWorld=unspecified"
    )


# -- broker -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer() -> WristbandSigner:
    return WristbandSigner(ec.generate_private_key(ec.SECP256R1()), form=WristbandForm.BOTH)


def _names(tools: list[Any]) -> list[str]:
    return [t["name"] for t in tools]


def test_signed_header_filters_tools_in_both_forms(signer: WristbandSigner) -> None:
    signed = signer.sign({SERVER: ["pods_list", "namespaces_list"], "other/server": ["x"]})
    for header in ("x-mcp-authorized", "x-authorized-tools"):
        kept = filter_tools(
            TOOLS, SERVER, {header: [signed.headers[header]]}, signer.public_key_pem, enforce=True
        )
        assert _names(kept) == ["pods_list", "namespaces_list"], header


def test_the_last_header_value_counts(signer: WristbandSigner) -> None:
    first = signer.sign({SERVER: ["pods_list"]}).headers["x-mcp-authorized"]
    last = signer.sign({SERVER: ["pods_delete"]}).headers["x-mcp-authorized"]
    kept = filter_tools(
        TOOLS, SERVER, {"x-mcp-authorized": [first, last]}, signer.public_key_pem, enforce=True
    )
    assert _names(kept) == ["pods_delete"]


def test_an_empty_grant_gives_an_empty_list_not_null(signer: WristbandSigner) -> None:
    signed = signer.sign({SERVER: []})
    kept = filter_tools(
        TOOLS,
        SERVER,
        {"x-mcp-authorized": [signed.headers["x-mcp-authorized"]]},
        signer.public_key_pem,
        enforce=True,
    )
    assert kept == []
    assert json.dumps({"tools": kept}) == '{"tools": []}'
    assert filter_tools(None, SERVER, {}, signer.public_key_pem, enforce=False) == []


def _forge(claims: dict[str, Any], key: Any, alg: str) -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_untrustworthy_headers_list_no_tools(signer: WristbandSigner) -> None:
    now = int(time.time())
    claim = json.dumps({"tools": {SERVER: ["pods_list", "pods_delete"]}})
    good = {"allowed-capabilities": claim, "exp": now + 300}
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = {
        "signed by another key": _forge(good, other_key, "ES256"),
        "HS256 with the public key as secret": _forge(
            good, signer.public_key_pem.encode()[:32], "HS256"
        ),
        "RS256": _forge(
            good, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
        ),
        "expired": signer._encode({**good, "exp": now - 60}),
        "claim is an object, not a JSON string": signer._encode(
            {"allowed-capabilities": {"tools": {SERVER: ["pods_list"]}}, "exp": now + 300}
        ),
        "claim missing": signer._encode({"exp": now + 300}),
        "not a JWT": "garbage",
    }
    for what, token in forged.items():
        with pytest.raises(HeaderInvalid):
            allowed_from_header({"x-mcp-authorized": [token]}, signer.public_key_pem)
        kept = filter_tools(
            TOOLS, SERVER, {"x-mcp-authorized": [token]}, signer.public_key_pem, enforce=False
        )
        assert kept == [], what


def test_absent_header_lists_everything_unless_enforced(signer: WristbandSigner) -> None:
    assert _names(filter_tools(TOOLS, SERVER, {}, signer.public_key_pem, enforce=False)) == [
        "pods_list",
        "pods_delete",
        "namespaces_list",
    ]
    assert filter_tools(TOOLS, SERVER, {}, signer.public_key_pem, enforce=True) == []
    # Capabilities without a "tools" key behave like an absent header (upstream).
    no_tools = signer._encode(
        {"allowed-capabilities": json.dumps({"prompts": {}}), "exp": int(time.time()) + 60}
    )
    assert allowed_from_header({"x-mcp-authorized": [no_tools]}, signer.public_key_pem) is None


def test_an_sse_tools_list_answer_is_filtered_and_teaches_the_catalogue(
    signer: WristbandSigner,
) -> None:
    config = GatewayConfig(
        router=Listen(),
        broker=Listen(),
        servers=(Server(SERVER, "http://127.0.0.1:1/mcp"),),
        trusted_header_public_key=signer.public_key_pem,
        enforce_capability_filtering=True,
    )
    broker = Broker(config, Catalogue())
    answer = {"jsonrpc": "2.0", "id": 4, "result": {"tools": TOOLS, "nextCursor": None}}
    stream = f"event: message\r\ndata: {json.dumps(answer)}\r\n\r\n"
    header = signer.sign({SERVER: ["pods_list"]}).headers["x-mcp-authorized"]
    [message] = sse_messages(stream)
    kept = filtered_message(message, broker, {"x-mcp-authorized": [header]})
    assert kept == {"jsonrpc": "2.0", "id": 4, "result": {"tools": [TOOLS[0]], "nextCursor": None}}
    # The router reads the unfiltered list's annotations from the shared catalogue.
    assert broker.catalogue.tools_of(SERVER) == {"pods_list", "pods_delete", "namespaces_list"}
    assert headers_for(Parsed("tools/call", "pods_delete"), broker.catalogue)[
        "x-mcp-annotation-hints"
    ] == ("readOnly=false,destructive=true,idempotent=true,openWorld=true")
    # Answers that are not tools/list results pass through unchanged.
    error = {"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "nope"}}
    assert filtered_message(error, broker, {}) == error
