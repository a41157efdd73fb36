"""Issue 14 items 1 and 2 end to end, through the local gateway (Envoy, the real MCP Gateway
broker/router, our token exchange and policy, two backends, clusters A and B).

The attacks, as a user holding a valid token would try them:

* replay at the gateway a token the gateway exchanged for a server (it reaches the backend, its
  logs, anything behind the gateway): before the fix the exchange step passed it on unchanged (its
  audience was "already right") and the policy decided on it as on the user's own token;
* send the gateway a genuine token of the realm issued to another client (``admin-cli``);
* skip the gateway: ask the plugins' checks directly (the token exchange's ``/check`` returned a
  realm cluster-b token for ``x-mcp-servername: cluster-b``), or call a backend's ``/mcp`` with
  one's own token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from tests.e2e.mcp_http import call, metric_total, open_session, post, rpc
from tests.testbed import keycloak as kc
from tests.testbed.mcp_gateway.stack import CLUSTER_B_TARGET, DEMO_NAMESPACE, LocalGateway

TOOL = "pods_list_in_namespace"


async def _exchanged_for_server_a(gateway: LocalGateway, user_token: str) -> str:
    """The token the gateway hands server A's backend for this user (what a leak would give)."""
    headers = {
        "authorization": f"Bearer {user_token}",
        "x-mcp-servername": gateway.server_a.name,
        "x-mcp-method": "tools/call",
        **gateway.caller_headers,
    }
    async with httpx2.AsyncClient(timeout=60) as http:
        resp = await http.post(
            f"{gateway.services['token-exchange'].url}/check/mcp", headers=headers
        )
    assert resp.status_code == 200, resp.text
    scheme, _, token = resp.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def _tool_calls(gateway: LocalGateway) -> float:
    return metric_total(gateway.services["backend"].url, "kmg_backend_tool_calls_total", tool=TOOL)


def _refused_at_the_gateway(resp: httpx2.Response, secret: str) -> None:
    assert resp.status_code == 401, (resp.status_code, resp.text[:300])
    assert resp.json()["allow"] is False
    assert resp.headers.get("www-authenticate", "").startswith("Bearer")
    assert secret not in resp.text
    assert "web-cluster-a" not in resp.text


async def test_a_token_exchanged_for_a_server_is_refused_at_the_gateway(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    exchanged = await _exchanged_for_server_a(local_gateway, tokens["mcp"])
    claims = kc.decode_jwt(exchanged)
    assert claims["aud"] in (a.name, [a.name])
    assert claims["azp"] == local_gateway.keycloak.gateway_client_id
    listing = call(a.tool(TOOL), namespace=DEMO_NAMESPACE)
    # The user's own session works; the same session with the replayed token does not.
    sid = await open_session(url, tokens["mcp"])
    assert (await post(url, listing, tokens["mcp"], session_id=sid)).status_code == 200
    calls = _tool_calls(local_gateway)
    _refused_at_the_gateway(await post(url, rpc("initialize"), exchanged), exchanged)
    _refused_at_the_gateway(await post(url, listing, exchanged, session_id=sid), exchanged)
    _refused_at_the_gateway(
        await post(url, rpc("tools/list"), exchanged, session_id=sid), exchanged
    )
    assert _tool_calls(local_gateway) == calls, "the replayed token reached the backend"


async def test_a_token_of_another_client_is_refused_at_the_gateway(
    local_gateway: LocalGateway,
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    other = await asyncio.to_thread(
        local_gateway.keycloak.user_token, "mcp", "mcp", client_id="admin-cli"
    )
    assert kc.decode_jwt(other)["azp"] == "admin-cli"
    # a session whose hairpin to server A is done (a real user's): the call's own auth answers
    own = local_gateway.user_token("mcp")
    sid = await open_session(url, own)
    listing = call(a.tool(TOOL), namespace=DEMO_NAMESPACE)
    assert (await post(url, listing, own, session_id=sid)).status_code == 200
    calls = _tool_calls(local_gateway)
    _refused_at_the_gateway(await post(url, rpc("initialize"), other), other)
    _refused_at_the_gateway(await post(url, listing, other, session_id=sid), other)
    assert _tool_calls(local_gateway) == calls


async def _direct(url: str, headers: dict[str, str], body: Any = None) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(url, headers=headers, json=body)


async def test_the_services_do_not_answer_around_the_gateway(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    services = local_gateway.services
    viewer = {"authorization": f"Bearer {tokens['viewer']}"}
    # The original finding: the viewer asks the token exchange's check for a cluster-b token.
    cluster_b = {**viewer, "x-mcp-servername": CLUSTER_B_TARGET, "x-mcp-method": "tools/call"}
    check = f"{services['token-exchange'].url}/check/mcp"
    resp = await _direct(check, cluster_b)
    assert (resp.status_code, resp.json()["error"]) == (403, "caller_unauthenticated")
    assert "authorization" not in resp.headers
    # ... and even with the gateway's credential, no check issues tokens for an unrouted target.
    resp = await _direct(check, {**cluster_b, **local_gateway.caller_headers})
    assert (resp.status_code, resp.json()["error"]) == (403, "target_not_routable")
    assert "authorization" not in resp.headers
    # The policy's check and JSON API.
    listing = {**viewer, "x-mcp-servername": "mcpBroker", "x-mcp-method": "tools/list"}
    resp = await _direct(f"{services['policy'].url}/check/mcp", listing)
    assert (resp.status_code, resp.json()["error"]) == (403, "caller_unauthenticated")
    assert not {"x-authorized-tools", "x-mcp-authorized"} & set(resp.headers)
    decide = {"server": local_gateway.server_a.name, "tool": TOOL}
    resp = await _direct(f"{services['policy'].url}/v1/decide", viewer, decide)
    assert (resp.status_code, resp.json()["error"]) == (403, "caller_unauthenticated")
    # A backend's /mcp with the user's own token (not the one the gateway exchanges for it).
    resp = await _direct(
        f"{services['backend'].url}/mcp",
        {
            "authorization": f"Bearer {tokens['mcp']}",
            "accept": "application/json, text/event-stream",
        },
        call(TOOL, namespace=DEMO_NAMESPACE),
    )
    assert resp.status_code == 401, resp.text
    assert "send it through the gateway" in resp.json()["error_description"]
