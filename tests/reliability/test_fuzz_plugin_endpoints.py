"""Property-based tests (hypothesis, bounded example counts) of the HTTP endpoints of the real
policy and token exchange services: any request gets a non-5xx JSON answer within a bound and the
service keeps answering; deeply nested and non-UTF-8 bodies too; no look-alike of a denied
namespace gets through the policy's namespace rule.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.gateway_plugins.policy.running import SERVER, RunningPolicy
from tests.gateway_plugins.token_exchange.running import (
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    RunningService,
)
from tests.reliability.fuzzing import (
    DEEP_JSON,
    HTTP,
    assert_json_non_5xx,
    bounded_answer,
    header_text,
    is_label,
    json_values,
    namespace_lookalikes,
)
from tests.reliability.hostile import LOCAL_AUDIENCE

pytestmark = pytest.mark.timeout(900)


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
        status, _, _ = await bounded_answer(
            http, "POST", f"{policy_service.url}{path}", headers=headers, data=DEEP_JSON
        )
        if status >= 500:
            failures.append(f"{path}: HTTP {status}")
    assert not failures, failures


async def test_token_facade_non_utf8_form(
    http: aiohttp.ClientSession, token_service: RunningService
) -> None:
    status, text, ctype = await bounded_answer(
        http,
        "POST",
        f"{token_service.url}/token",
        data=b"grant_type=\xbe\xff&subject_token=\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=aiohttp.BasicAuth(FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
    )
    assert_json_non_5xx(status, text, ctype, "non-UTF-8 form")
    assert status == 400


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
    status, text, ctype = await bounded_answer(
        http, "POST", f"{policy_service.url}/check/mcp", headers=headers, data=body
    )
    assert_json_non_5xx(status, text, ctype, (headers | {"Authorization": "-"}, body[:80]))
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
        status, text, ctype = await bounded_answer(
            http, "POST", f"{policy_service.url}{path}", headers=headers, data=body
        )
        assert_json_non_5xx(status, text, ctype, (path, body[:120]))


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
    status, text, ctype = await bounded_answer(http, "POST", url, **kwargs)
    assert_json_non_5xx(status, text, ctype, (api, namespace))
    allowed = json.loads(text)["allow"]
    genuine = namespace == "" or is_label(namespace)
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
    status, text, ctype = await bounded_answer(
        http, "POST", f"{token_service.url}/check/mcp", headers=headers
    )
    assert_json_non_5xx(status, text, ctype, target)
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
    status, text, ctype = await bounded_answer(http, "POST", f"{token_service.url}/token", **kwargs)
    assert_json_non_5xx(status, text, ctype, sorted(form))
    assert status in (400, 401), (status, text[:200])
    assert token_service.sts_calls() == before  # no fuzzed subject token is valid
