"""DNS rebinding and cross-site protection of the running backend (MCP transport security).

The attacks are raw HTTP, as a browser page would send them; what must keep working is driven
with the real ``mcp`` client. Every refusal is checked on both serving paths of ``/mcp`` (the
single exchange and the SDK's transport) and must come before any tool runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request

from kmg_common.host_origin import HostOriginRule
from mcp_backend.config import Settings, SettingsError, load_settings
from mcp_backend.transport.host_origin_guard import host_origin_rule, transport_security
from tests.mcp_backend.conftest import NS, RunningBackend, Tokens, mcp_client, text_of

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "pods_list_in_namespace", "arguments": {"namespace": NS}},
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
EVIL = "evil.example"


def _tool_calls(running: RunningBackend) -> float:
    """Tool calls the backend ran, any tool, any outcome (its Prometheus counter)."""
    registry = running.backend.metrics.registry
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "kmg_backend_tool_calls"
        for sample in metric.samples
        if sample.name == "kmg_backend_tool_calls_total"
    )


def _refused(running: RunningBackend, reason: str) -> float:
    value = running.backend.metrics.registry.get_sample_value(
        "kmg_backend_host_origin_refused_total", {"reason": reason}
    )
    return value or 0.0


async def _post(
    running: RunningBackend, body: Any, token: str | None, **headers: str
) -> httpx2.Response:
    sent = {**HEADERS, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(running.url, content=json.dumps(body).encode(), headers=sent)


@pytest.fixture
async def both_paths(backend: RunningBackend, backend_factory: Any) -> list[RunningBackend]:
    """The default backend (single exchange) and one serving every request by the SDK."""
    return [backend, await backend_factory(single_exchange=False)]


def _assert_refusal(answer: httpx2.Response, status: int, error: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert body["error"] == error
    assert body["message"]
    return body


# -- Origin ---------------------------------------------------------------------------------------
async def test_a_foreign_origin_is_refused_before_any_tool_runs(
    both_paths: list[RunningBackend], tokens: Tokens
) -> None:
    for running in both_paths:
        ran, refused = _tool_calls(running), _refused(running, "origin_not_allowed")
        for body in (CALL, INITIALIZE):
            answer = await _post(running, body, tokens.admin, Origin=f"http://{EVIL}")
            message = _assert_refusal(answer, 403, "origin_not_allowed")["message"]
            assert f"'http://{EVIL}'" in message
            assert "allowed_origins" in message
        # Refused before authentication too: no 401 pointing a foreign page at the metadata.
        anonymous = await _post(running, CALL, None, Origin="https://evil.example")
        _assert_refusal(anonymous, 403, "origin_not_allowed")
        assert _tool_calls(running) == ran
        assert _refused(running, "origin_not_allowed") == refused + 3
    fast, sdk = [await _post(r, CALL, tokens.admin, Origin="null") for r in both_paths]
    assert fast.status_code == sdk.status_code == 403
    assert fast.content == sdk.content  # one rule in front of both paths


async def test_requests_without_origin_are_served(
    backend: RunningBackend, tokens: Tokens, workloads: dict[str, Any]
) -> None:
    """Clients that are not browsers (and the gateway) send no Origin: the real MCP client."""
    async with mcp_client(backend.url, tokens.admin) as client:
        tools = await client.list_tools()
        result = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert tools.tools
    assert not result.is_error, text_of(result)
    assert all(pod in text_of(result) for pod in workloads["web_pods"])


async def test_allowed_origins_are_served(backend_factory: Any, tokens: Tokens) -> None:
    # Listening on loopback: a local browser client (the MCP Inspector's origin) is served.
    local = await backend_factory()
    async with mcp_client(
        local.url, tokens.admin, headers={"Origin": "http://localhost:6274"}
    ) as client:
        result = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert not result.is_error, text_of(result)
    # Configured: resource_url's origin and allowed_origins; any other is still refused.
    public = await backend_factory(
        resource_url="https://mcp.example.com/mcp", allowed_origins=["https://app.example.com"]
    )
    for origin in ("https://mcp.example.com", "https://app.example.com"):
        async with mcp_client(public.url, tokens.admin, headers={"Origin": origin}) as client:
            result = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
        assert not result.is_error, (origin, text_of(result))
    _assert_refusal(
        await _post(public, CALL, tokens.admin, Origin="https://other.example.com"),
        403,
        "origin_not_allowed",
    )


# -- Host ---------------------------------------------------------------------------------------
async def test_dns_rebinding_is_refused_on_loopback(
    both_paths: list[RunningBackend], tokens: Tokens
) -> None:
    """The replayed attack: a page of evil.example whose name now resolves to 127.0.0.1 posts
    to the backend; the browser names evil.example in Host (and, for a POST, in Origin)."""
    for running in both_paths:
        port = running.port
        ran = _tool_calls(running)
        for body in (CALL, INITIALIZE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}):
            rebinding = await _post(
                running, body, tokens.admin, Host=f"{EVIL}:{port}", Origin=f"http://{EVIL}:{port}"
            )
            message = _assert_refusal(rebinding, 421, "host_not_allowed")["message"]
            assert f"'{EVIL}:{port}'" in message
            assert "allowed_hosts" in message
        # A same-origin GET carries no Origin: the Host alone gives it away.
        _assert_refusal(
            await _post(running, CALL, tokens.admin, Host=f"{EVIL}:{port}"), 421, "host_not_allowed"
        )
        assert _tool_calls(running) == ran


async def test_metadata_is_checked_and_probes_are_not(backend: RunningBackend) -> None:
    foreign = {"Host": EVIL}
    async with httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/nothing-here"):
            _assert_refusal(
                await http.get(backend.base + path, headers=foreign), 421, "host_not_allowed"
            )
            _assert_refusal(
                await http.get(backend.base + path, headers={"Origin": "http://evil.example"}),
                403,
                "origin_not_allowed",
            )
        # Probes and scrapers reach a pod by its IP, under any name.
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = await http.get(backend.base + path, headers=foreign)
            assert answer.status_code == 200, (path, answer.text)
        metrics = (await http.get(backend.base + "/metrics")).text
    assert 'kmg_backend_host_origin_refused_total{reason="host_not_allowed"}' in metrics


async def test_a_public_resource_url_adds_its_host(backend_factory: Any, tokens: Tokens) -> None:
    running = await backend_factory(resource_url="https://mcp.example.com/mcp")
    async with mcp_client(running.url, tokens.admin, headers={"Host": "mcp.example.com"}) as client:
        result = await client.call_tool("pods_list_in_namespace", {"namespace": NS})
    assert not result.is_error, text_of(result)
    _assert_refusal(await _post(running, CALL, tokens.admin, Host=EVIL), 421, "host_not_allowed")


async def test_behind_the_gateway_only_its_hosts_are_served(
    backend_factory: Any, tokens: Tokens
) -> None:
    """A pod listens on every interface: the manifests' names are served, nothing else (the
    test backend binds 127.0.0.1 whatever ``host`` says; the rule follows the setting)."""
    running = await backend_factory(
        host="0.0.0.0",  # noqa: S104
        resource_url="http://mcp.127-0-0-1.sslip.io:8888/mcp",
        allowed_hosts=["kubernetes-mcp.mcp.local", "mcp-backend.kmg-system.svc.cluster.local:*"],
    )
    for host in (
        "kubernetes-mcp.mcp.local",  # the MCP Gateway's router, routing a tools/call
        "mcp-backend.kmg-system.svc.cluster.local:8080",  # its broker, calling the URL
        "mcp.127-0-0-1.sslip.io:8888",  # the public host
        f"127.0.0.1:{running.port}",  # kubectl port-forward
    ):
        answer = await _post(running, CALL, tokens.admin, Host=host)
        assert answer.status_code == 200, (host, answer.text)
        assert "result" in answer.json()
    for host in ("10.244.0.7:8080", f"{EVIL}:8080", "mcp-backend.kmg-system.svc.cluster.local"):
        _assert_refusal(
            await _post(running, CALL, tokens.admin, Host=host), 421, "host_not_allowed"
        )
    # Not on loopback: a local page's origin is as foreign as any other.
    _assert_refusal(
        await _post(
            running,
            CALL,
            tokens.admin,
            Host="kubernetes-mcp.mcp.local",
            Origin="http://localhost:6274",
        ),
        403,
        "origin_not_allowed",
    )


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("allowed_hosts", "https://mcp.example.com", "give the Host header value"),
        ("allowed_hosts", "*", "wildcard"),
        ("allowed_origins", "app.example.com", "is not an origin"),
    ],
)
def test_entries_that_cannot_match_are_refused_at_start(key: str, value: str, says: str) -> None:
    environ = {f"KMG_BACKEND_{key.upper()}": json.dumps([value])}
    with pytest.raises(SettingsError, match=says) as caught:
        load_settings(environ=environ)
    assert key in str(caught.value)


def test_a_resource_url_without_a_host_is_refused_at_start() -> None:
    """Its host and origin are allowed: a URL naming none (or an unusable port) is an error."""
    for value in ("mcp.example.com/mcp", "https://mcp.example.com:https/mcp"):
        with pytest.raises(SettingsError, match="is not a public URL") as caught:
            load_settings(environ={"KMG_BACKEND_RESOURCE_URL": value})
        assert "resource_url" in str(caught.value)


# -- the SDK's transport sees the same rule ------------------------------------------------------
RULE = HostOriginRule.derive(
    "127.0.0.1",
    allowed_hosts=["mcp.example.com", "svc.ns:*"],
    allowed_origins=["https://app.example.com", "http://dev.example:*"],
    public_urls=["https://public.example.com/mcp"],
)
NAMES = st.sampled_from(
    ["localhost", "127.0.0.1", "[::1]", "mcp.example.com", "svc.ns", "public.example.com", EVIL]
)
HOSTS = st.one_of(
    st.none(),
    st.just(""),
    st.builds(lambda n, p: n + p, NAMES, st.sampled_from(["", ":8080", ":*", ":", ":x", "x"])),
    st.text(max_size=20),
)
ORIGINS = st.one_of(
    st.none(),
    st.builds(
        lambda s, h: s + h, st.sampled_from(["http://", "https://", "", "null"]), HOSTS.filter(bool)
    ),
    st.text(max_size=20),
)


def _status_from_sdk(host: str | None, origin: str | None) -> int | None:
    headers = [(k, v.encode("latin-1")) for k, v in ((b"host", host), (b"origin", origin)) if v]
    request = Request({"type": "http", "method": "GET", "path": "/mcp", "headers": headers})
    middleware = TransportSecurityMiddleware(transport_security(RULE))
    answer = asyncio.run(middleware.validate_request(request, is_post=False))
    return None if answer is None else answer.status_code


@settings(max_examples=400, deadline=None)
@given(HOSTS, ORIGINS)
def test_the_sdk_judges_every_host_and_origin_alike(host: str | None, origin: str | None) -> None:
    for value in (host, origin):
        if value is not None:
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                return  # not a possible header value
    ours = RULE.refusal(host, origin)
    assert (None if ours is None else ours.status) == _status_from_sdk(host, origin)


def test_the_transport_gets_the_backends_rule() -> None:
    settings_ = Settings.model_validate(
        {
            "clusters": [{"name": "c", "server": "https://127.0.0.1:1"}],
            "resource_url": "https://mcp.example.com/mcp",
            "allowed_hosts": ["kubernetes-mcp.mcp.local"],
        }
    )
    security = transport_security(host_origin_rule(settings_))
    assert security.enable_dns_rebinding_protection
    assert "kubernetes-mcp.mcp.local" in security.allowed_hosts
    assert "mcp.example.com" in security.allowed_hosts
    assert security.allowed_origins == [
        *(f"http://{n}{p}" for n in ("localhost", "127.0.0.1", "[::1]") for p in ("", ":*")),
        "https://mcp.example.com",
    ]


async def test_host_and_origin_checks_are_configurable(
    backend_factory: Any, tokens: Tokens
) -> None:
    """Behind a gateway the Host is the route's: the configured hosts get through, besides the
    loopback names (the tests above have the whole rule)."""
    running = await backend_factory(
        allowed_hosts=["mcp.example.com"], allowed_origins=["https://app.example.com"]
    )
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {tokens.nobody}",
        "MCP-Protocol-Version": "2025-11-25",
        "Host": "mcp.example.com",
    }
    async with httpx2.AsyncClient() as http:
        wrong_host = await http.post(
            running.url, json=body, headers={**headers, "Host": "other.example.com"}
        )
        right_host = await http.post(running.url, json=body, headers=headers)
        good_origin = await http.post(
            running.url, json=body, headers={**headers, "Origin": "https://app.example.com"}
        )
        bad_origin = await http.post(
            running.url, json=body, headers={**headers, "Origin": "https://evil.example"}
        )
    assert wrong_host.status_code == 421, wrong_host.text[:300]
    assert wrong_host.json()["error"] == "host_not_allowed"
    assert right_host.status_code == 200, right_host.text[:300]
    assert good_origin.status_code == 200, good_origin.text[:300]
    assert bad_origin.status_code == 403, bad_origin.text[:300]
    assert bad_origin.json()["error"] == "origin_not_allowed"
