"""DNS rebinding and cross-site protection end to end, through the local gateway with the real
MCP Gateway (broker/router v0.9.0) and both servers (``a_``: backend, cluster A; ``b_``:
backend-b, cluster B).

What the gateway sends must be served: the router calls each backend with ``:authority`` = that
server's hostname (the hairpin ``initialize`` and the routed ``tools/call``), the broker's
discovery comes straight to ``127.0.0.1:<port>``, and none of it carries an ``Origin``. What a
browser page sends must not: a foreign ``Origin`` is refused by the backend before the tool runs
(at the router's hairpin ``initialize``, or at the call itself once the hairpin is done), and a
DNS-rebound name in ``Host`` is refused on the backends' loopback listeners. The real ``mcp``
client drives what must work, raw HTTP the attacks; the backends' counters
(``kmg_backend_host_origin_refused_total``, ``kmg_backend_tool_calls_total``) say who refused
what and that no tool ran.
"""

from __future__ import annotations

import httpx2
import pytest

from tests.e2e.mcp_http import (
    UserTokens,
    call,
    metric_total,
    open_session,
    post,
    result_of,
    rpc,
    session,
    text_of,
)
from tests.testbed.mcp_gateway.envoy_config import GatewayServer
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, SERVER_PLANS, LocalGateway

EVIL = "evil.example"
INSPECTOR = "http://localhost:6274"  # the MCP Inspector's origin: a local browser client


def _servers(gateway: LocalGateway) -> list[tuple[GatewayServer, str, str]]:
    """(server, its backend's base URL, the cluster it serves) for both servers."""
    return [
        (server, gateway.services[plan.service].url, plan.cluster)
        for plan, server in zip(SERVER_PLANS, gateway.servers, strict=True)
    ]


def _refused(backend: str, reason: str) -> float:
    return metric_total(backend, "kmg_backend_host_origin_refused_total", reason=reason)


def _ran(backend: str, tool: str) -> float:
    return metric_total(backend, "kmg_backend_tool_calls_total", tool=tool)


def _pods(answer: httpx2.Response, cluster: str) -> list[str]:
    text = result_of(answer)["content"][0]["text"]
    return [w for w in text.split() if w.startswith(f"web-{cluster}-")]


async def test_the_gateways_hosts_are_served_on_both_servers(
    local_gateway: LocalGateway, tokens: UserTokens
) -> None:
    """The router's calls reach each backend under that server's hostname and are served (each
    backend's allowed_hosts is its hostname, as the manifests' HTTPRoute); no request of the
    gateway is refused."""
    servers = _servers(local_gateway)
    before = {backend: _refused(backend, "host_not_allowed") for _, backend, _ in servers}
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        for server, _, cluster in servers:
            assert server.tool("pods_list_in_namespace") in listed
            result = await client.call_tool(
                server.tool("pods_list_in_namespace"), {"namespace": DEMO_NAMESPACE}
            )
            assert not result.is_error, text_of(result)
            assert f"web-{cluster}-" in text_of(result)
    for server, backend, _ in servers:
        assert _refused(backend, "host_not_allowed") == before[backend], server.name
    # Each backend answers its own routing name (what the router sends), not the other's; the
    # token is one the gateway exchanged for that server (the backends are bound to audiences).
    for (server, backend, _), (other, _, _) in zip(servers, servers[::-1], strict=True):
        exchanged = await local_gateway.keycloak.aexchange(tokens["mcp"], audience=server.name)
        token = exchanged["access_token"]
        own = await post(f"{backend}/mcp", rpc("tools/list"), token, {"Host": server.hostname})
        assert own.status_code == 200, own.text[:300]
        assert result_of(own)["tools"]
        foreign = await post(f"{backend}/mcp", rpc("tools/list"), token, {"Host": other.hostname})
        assert foreign.status_code == 421, foreign.text[:300]
        assert foreign.json()["error"] == "host_not_allowed"


async def test_dns_rebinding_is_refused_on_the_loopback_backends(
    local_gateway: LocalGateway, tokens: UserTokens
) -> None:
    """A page of evil.example whose name now resolves to 127.0.0.1 posts to a backend: the
    browser names evil.example in Host (and in Origin). Refused before any tool, with a JSON
    error that says what to do; the token it carries changes nothing."""
    for server, backend, _ in _servers(local_gateway):
        port = backend.rsplit(":", 1)[1]
        refused, ran = _refused(backend, "host_not_allowed"), _ran(backend, "pods_delete")
        for headers in (
            {"Host": f"{EVIL}:{port}", "Origin": f"http://{EVIL}:{port}"},
            {"Host": f"{EVIL}:{port}"},
        ):
            answer = await post(
                f"{backend}/mcp",
                call("pods_delete", namespace=DEMO_NAMESPACE, name="web"),
                tokens["mcp"],
                headers,
            )
            assert answer.status_code == 421, (server.name, answer.text[:300])
            assert answer.headers["content-type"] == "application/json"
            body = answer.json()
            assert body["error"] == "host_not_allowed"
            assert f"'{EVIL}:{port}'" in body["message"]
            assert "allowed_hosts" in body["message"]
        assert _refused(backend, "host_not_allowed") == refused + 2, server.name
        assert _ran(backend, "pods_delete") == ran, server.name


async def test_a_foreign_origin_is_refused_before_the_tool_runs(
    local_gateway: LocalGateway, tokens: UserTokens
) -> None:
    """A page of another site drives the user's browser (with a token it obtained) to delete a
    pod through the gateway, on both servers. The policy allows pods_delete to this user; the
    backend refuses the Origin: at the router's hairpin initialize (the router copies the
    client's headers) on a fresh session, and at the call itself once the hairpin is done."""
    url, token, evil = local_gateway.mcp_url, tokens["mcp"], {"Origin": f"https://{EVIL}"}
    for server, backend, cluster in _servers(local_gateway):
        listing = call(server.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE)
        session_id = await open_session(url, token)
        refused, ran = _refused(backend, "origin_not_allowed"), _ran(backend, "pods_delete")
        pod = _pods(await post(url, listing, token, None, session_id), cluster)[0]
        delete = call(server.tool("pods_delete"), namespace=DEMO_NAMESPACE, name=pod)
        # 1. a fresh session: the hairpin initialize carries the Origin and is refused; the
        #    router answers with its own text around the backend's JSON error.
        fresh = await open_session(url, token, evil)  # the broker's initialize: not ours to judge
        at_hairpin = await post(url, delete, token, evil, fresh)
        assert at_hairpin.status_code == 403, at_hairpin.text[:300]
        assert "origin_not_allowed" in at_hairpin.text
        assert "allowed_origins" in at_hairpin.text
        # 2. the hairpin done (the listing above, no Origin): the backend's own JSON answer.
        at_call = await post(url, delete, token, evil, session_id)
        assert at_call.status_code == 403, at_call.text[:300]
        assert at_call.headers["content-type"] == "application/json"
        assert at_call.json()["error"] == "origin_not_allowed"
        assert f"'https://{EVIL}'" in at_call.json()["message"]
        assert _refused(backend, "origin_not_allowed") == refused + 2, server.name
        assert _ran(backend, "pods_delete") == ran, server.name
        assert pod in _pods(await post(url, listing, token, None, session_id), cluster)


@pytest.mark.parametrize("origin", ["gateway", INSPECTOR])
async def test_allowed_origins_are_served(
    local_gateway: LocalGateway, tokens: UserTokens, origin: str
) -> None:
    """A browser app on the gateway's own origin (the backends' resource_url) and a local browser
    client (the backends listen on loopback) are served on both servers, hairpin included."""
    url, token = local_gateway.mcp_url, tokens["mcp"]
    headers = {"Origin": local_gateway.envoy.url if origin == "gateway" else origin}
    session_id = await open_session(url, token, headers)
    for server, backend, cluster in _servers(local_gateway):
        refused = _refused(backend, "origin_not_allowed")
        answer = await post(
            url,
            call(server.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE),
            token,
            headers,
            session_id,
        )
        assert _pods(answer, cluster), answer.text[:300]
        assert _refused(backend, "origin_not_allowed") == refused, server.name


async def test_plugin_endpoints_refuse_foreign_host_and_origin(
    local_gateway: LocalGateway,
) -> None:
    """The token exchange's /token facade (called by backend B) and the policy's JSON APIs and
    public key: a foreign Origin 403, a foreign Host 421, in the services' deny shape; without
    Origin the handler itself answers."""
    exchange = f"{local_gateway.services['token-exchange'].url}/token"
    policy = local_gateway.services["policy"].url
    async with httpx2.AsyncClient(timeout=30) as http:
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"}
        refused = await http.post(exchange, data=form, headers={"Origin": f"http://{EVIL}"})
        assert (refused.status_code, refused.json()["error"]) == (403, "origin_not_allowed")
        refused = await http.post(exchange, data=form, headers={"Host": EVIL})
        assert (refused.status_code, refused.json()["error"]) == (421, "host_not_allowed")
        assert refused.json()["allow"] is False
        # Without Origin the facade itself answers (here: no client authentication).
        answered = await http.post(exchange, data=form)
        assert (answered.status_code, answered.json()["error"]) == (401, "invalid_client")
        key = await http.get(f"{policy}/.well-known/jwks.json", headers={"Host": EVIL})
        assert (key.status_code, key.json()["allow"]) == (421, False)
        decide = await http.post(
            f"{policy}/v1/decide", json=rpc("tools/list"), headers={"Origin": f"http://{EVIL}"}
        )
        assert (decide.status_code, decide.json()["allow"]) == (403, False)
        key = await http.get(f"{policy}/.well-known/jwks.json")
        assert key.status_code == 200
        assert key.json()["keys"]
