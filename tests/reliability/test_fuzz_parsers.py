"""Property-based tests (hypothesis) of the three services' request parsers.

Pure parsers: any input gives a result or the parser's own clear error, never another exception.
HTTP endpoints (bounded example counts, the real services): any request gets a non-5xx answer
within a bound, JSON for the plugins, and the service keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway_plugins.common.jwt_validation import looks_like_jwt
from gateway_plugins.policy.input import (
    InputError,
    arguments_from_body,
    check_arguments,
    check_server_name,
    check_tool_name,
    parse_annotation_hints,
)
from kmg_common.bearer import bearer_token
from mcp_backend.errors import ToolFailure
from mcp_backend.operations.apply import parse_manifests
from mcp_backend.transport.auth import extract_token
from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.gateway_plugins.policy.running import SERVER, RunningPolicy
from tests.gateway_plugins.token_exchange.running import (
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    RunningService,
)
from tests.reliability.hostile import LOCAL_AUDIENCE

pytestmark = pytest.mark.timeout(900)

DEEP_JSON = b'{"params":{"arguments":' + b"[" * 5000 + b"]" * 5000 + b"}}"
DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
# Issue 14 item 5: look-alikes of a denied namespace (what re.match with "$" let through: a final
# newline), built around "kube-system" with a few characters of any kind on either side.
LOOKALIKE_EXAMPLES = ("kube-system\n", "kube-system\r\n", "\nkube-system", "kube-system\u2028",
                      "kube\u2011system", "kube-system\u200b", "\uff4bube-system")  # fmt: skip
namespace_lookalikes = st.one_of(
    st.builds(lambda a, b: a + "kube-system" + b, st.text(max_size=2), st.text(max_size=2)),
    st.text(max_size=70),
)
# An independent statement of a Kubernetes namespace name (RFC 1123 label), for the oracles.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _is_label(value: str) -> bool:
    return _LABEL.fullmatch(value) is not None


PURE = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
HTTP = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


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
    if namespace == "" or _is_label(namespace):
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
        assert namespace == "" or _is_label(namespace), repr(namespace)


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


async def test_policy_endpoints_deeply_nested_body(
    http: aiohttp.ClientSession, policy_service: RunningPolicy, valid_local_token: str
) -> None:
    headers = {
        "Authorization": f"Bearer {valid_local_token}",
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_list",
    }
    failures = []
    for path in ("/check/mcp", "/v1/decide", "/v1/filter"):
        status, _, _ = await _answer(
            http, "POST", f"{policy_service.url}{path}", headers=headers, data=DEEP_JSON
        )
        if status >= 500:
            failures.append(f"{path}: HTTP {status}")
    assert not failures, failures


async def test_token_facade_non_utf8_form(
    http: aiohttp.ClientSession, token_service: RunningService
) -> None:
    status, text, ctype = await _answer(
        http,
        "POST",
        f"{token_service.url}/token",
        data=b"grant_type=\xbe\xff&subject_token=\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=aiohttp.BasicAuth(FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
    )
    _assert_json_non_5xx(status, text, ctype, "non-UTF-8 form")
    assert status == 400


# -- HTTP endpoints of the real services ---------------------------------------------------------
async def _answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, str, str]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        result = resp.status, text, resp.content_type
    assert time.monotonic() - started < 15, (url, kwargs)
    return result


def _assert_json_non_5xx(status: int, text: str, ctype: str, what: Any) -> None:
    assert status < 500, (status, text[:300], what)
    assert ctype == "application/json", (status, ctype, text[:200], what)
    json.loads(text)


@pytest.fixture(scope="module")
def valid_local_token(local_issuer: LocalIssuer) -> str:
    return local_issuer.sign(local_issuer.claims(aud=[LOCAL_AUDIENCE], exp=int(time.time()) + 3600))


@HTTP
@given(
    method=st.sampled_from(["", "tools/call", "tools/list", "initialize", "x" * 300]),
    server=st.one_of(st.just(SERVER), st.just("mcpBroker"), header_text),
    tool=st.one_of(st.just("pods_list"), header_text),
    hints=header_text,
    body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
)
async def test_policy_check_endpoint(
    http: aiohttp.ClientSession,
    policy_service: RunningPolicy,
    valid_local_token: str,
    method: str,
    server: str,
    tool: str,
    hints: str,
    body: bytes,
) -> None:
    headers = {
        "Authorization": f"Bearer {valid_local_token}",
        "x-mcp-method": method,
        "x-mcp-servername": server,
        "x-mcp-toolname": tool,
        "x-mcp-annotation-hints": hints,
    }
    status, text, ctype = await _answer(
        http, "POST", f"{policy_service.url}/check/mcp", headers=headers, data=body
    )
    _assert_json_non_5xx(status, text, ctype, (headers | {"Authorization": "-"}, body[:80]))
    assert json.loads(text)["allow"] is (status == 200)


@HTTP
@given(doc=json_values, raw=st.binary(max_size=100), use_raw=st.booleans())
@example(doc={"method": "tools/call", "server": SERVER, "tool": 5}, raw=b"", use_raw=False)
async def test_policy_json_apis(
    http: aiohttp.ClientSession,
    policy_service: RunningPolicy,
    valid_local_token: str,
    doc: Any,
    raw: bytes,
    use_raw: bool,
) -> None:
    body = raw if use_raw else json.dumps(doc).encode()
    headers = {"Authorization": f"Bearer {valid_local_token}", "Content-Type": "application/json"}
    for path in ("/v1/decide", "/v1/filter"):
        status, text, ctype = await _answer(
            http, "POST", f"{policy_service.url}{path}", headers=headers, data=body
        )
        _assert_json_non_5xx(status, text, ctype, (path, body[:120]))


@pytest.fixture(scope="module")
def exec_token(local_issuer: LocalIssuer) -> str:
    """A local user holding pods_exec (the default namespace rule keeps it out of kube-system)."""
    return local_issuer.sign(
        local_issuer.claims(
            "exec-user",
            aud=[LOCAL_AUDIENCE],
            exp=int(time.time()) + 3600,
            resource_access={SERVER: {"roles": ["pods_exec"]}},
        )
    )


@HTTP
@given(namespace=namespace_lookalikes, api=st.booleans())
@example(namespace="kube-system\n", api=False)
@example(namespace="kube-system\n", api=True)
@example(namespace="kube-system", api=False)
@example(namespace="default", api=True)
async def test_policy_namespace_rule_has_no_lookalike_bypass(
    http: aiohttp.ClientSession,
    policy_service: RunningPolicy,
    exec_token: str,
    namespace: str,
    api: bool,
) -> None:
    """Issue 14 item 5: pods_exec is denied in kube-system; no spelling of a namespace gets it
    allowed unless it is a genuine namespace name other than kube-system."""
    arguments = {"name": "p", "namespace": namespace}
    auth = {"Authorization": f"Bearer {exec_token}"}
    if api:
        url = f"{policy_service.url}/v1/decide"
        kwargs: dict[str, Any] = {
            "headers": auth,
            "json": {"server": SERVER, "tool": "pods_exec", "arguments": arguments},
        }
    else:
        url = f"{policy_service.url}/check/mcp"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "pods_exec", "arguments": arguments}}  # fmt: skip
        headers = {**auth, "x-mcp-method": "tools/call", "x-mcp-servername": SERVER,
                   "x-mcp-toolname": "pods_exec"}  # fmt: skip
        kwargs = {"headers": headers, "data": json.dumps(body).encode()}
    status, text, ctype = await _answer(http, "POST", url, **kwargs)
    _assert_json_non_5xx(status, text, ctype, (api, namespace))
    allowed = json.loads(text)["allow"]
    genuine = namespace == "" or _is_label(namespace)
    assert allowed is (genuine and namespace != "kube-system"), (api, repr(namespace), text[:300])
    if not genuine:
        assert status == 400, (status, text[:300])
        assert "not a valid Kubernetes namespace name" in json.loads(text)["reason"]


@HTTP
@given(
    authorization=header_text,
    target=st.one_of(st.just("mcp-test/kubernetes-mcp"), st.just("mcpBroker"), header_text),
)
@example(authorization="Bearer " + "eyJ" + "A" * 7000, target="mcpBroker")
@example(authorization="Bearer eyJhbGciOiJub25lIn0.e30.", target="mcpBroker")
async def test_token_exchange_check_endpoint(
    http: aiohttp.ClientSession, token_service: RunningService, authorization: str, target: str
) -> None:
    before = token_service.sts_calls()
    headers = {"authorization": authorization, "x-mcp-servername": target}
    status, text, ctype = await _answer(
        http, "POST", f"{token_service.url}/check/mcp", headers=headers
    )
    _assert_json_non_5xx(status, text, ctype, target)
    assert status in (401, 403), (status, text[:200])  # no fuzzed header is a valid token
    assert token_service.sts_calls() == before


@HTTP
@given(
    form=st.dictionaries(
        st.sampled_from(
            ["grant_type", "subject_token", "subject_token_type", "audience", "resource",
             "scope", "actor_token", "requested_token_type", "client_id", "client_secret", "x"]
        ),
        st.text(max_size=100),
        max_size=8,
    ),
    basic=st.one_of(st.none(), st.just((FACADE_CLIENT_ID, FACADE_CLIENT_SECRET)),
                    st.tuples(st.text(max_size=20), st.text(max_size=20))),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)  # fmt: skip
async def test_token_exchange_facade_endpoint(
    http: aiohttp.ClientSession,
    token_service: RunningService,
    form: dict[str, str],
    basic: tuple[str, str] | None,
    raw: bytes | None,
) -> None:
    before = token_service.sts_calls()
    kwargs: dict[str, Any] = {"headers": {}}
    if basic is not None and ":" not in basic[0]:
        # Built by hand from UTF-8: aiohttp's BasicAuth only encodes Latin-1, and the service must
        # cope with any bytes a client sends.
        credentials = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        kwargs["headers"]["Authorization"] = f"Basic {credentials}"
    if raw is not None:
        kwargs["data"] = raw
        kwargs["headers"]["Content-Type"] = "application/x-www-form-urlencoded"
    else:
        kwargs["data"] = form
    status, text, ctype = await _answer(http, "POST", f"{token_service.url}/token", **kwargs)
    _assert_json_non_5xx(status, text, ctype, sorted(form))
    assert status in (400, 401), (status, text[:200])
    assert token_service.sts_calls() == before  # no fuzzed subject token is valid


TOOL_NAMES = [
    "pods_list", "pods_get", "pods_log", "pods_exec", "pods_delete", "pods_run", "pods_top",
    "resources_list", "resources_get", "resources_create_or_update", "resources_delete",
    "resources_scale", "events_list", "namespaces_list", "nodes_log", "nodes_top",
    "nodes_stats_summary", "configuration_view", "configuration_contexts_list", "helm_list",
    "helm_install", "helm_uninstall", "helm_status", "helm_history", "helm_upgrade",
    "helm_rollback", "rollout_status", "rollout_history", "rollout_restart", "rollout_undo",
    "can_i", "workload_diagnose", "no_such_tool",
]  # fmt: skip


@pytest.fixture(scope="module")
async def nobody_backend(cluster_a: Any, service_account_token: Any) -> Any:
    """The real backend with a token that may do nothing on cluster A (fuzzing changes nothing)."""
    from mcp_backend.config import Settings
    from tests.mcp_backend.conftest import cluster_entry, start_backend, stop_backend
    from tests.testbed import build

    token = await service_account_token(cluster_a, name="rel-fuzz-nobody")
    running = await start_backend(
        Settings.model_validate(
            {
                "clusters": [cluster_entry(cluster_a, default=True)],
                "request_timeout_s": 5,
                "helm_binary": str(build.binary("helm")),
                "helm_timeout_s": 10,
            }
        )
    )
    yield running, token
    await stop_backend(running)


@HTTP
@given(
    tool=st.sampled_from(TOOL_NAMES),
    arguments=st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(
                ["name", "namespace", "context", "apiVersion", "kind", "labelSelector",
                 "fieldSelector", "resource", "command", "tail", "limit", "output", "scale",
                 "values", "chart", "continue", "container", "query", "tailLines", "since",
                 "sinceTime", "grep", "grepRegex", "dryRun", "revision", "verb", "max",
                 "reuse_values"]
            ),
            json_values,
            max_size=6,
        ),
    ),
)  # fmt: skip
async def test_backend_tool_arguments(nobody_backend: Any, tool: str, arguments: Any) -> None:
    running, token = nobody_backend
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        status, text, _ = await _answer(
            http,
            "POST",
            running.url,
            json=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
        )
    assert status < 500, (status, text[:300], tool, arguments)
    answer = json.loads(text)
    assert "result" in answer or "error" in answer
    if "result" in answer:
        content = "".join(c.get("text", "") for c in answer["result"]["content"])
        assert "internal error" not in content, (tool, arguments, content[:300])
    await asyncio.sleep(0)
