"""DNS rebinding and cross-site protection, end to end: the local gateway's own requests (its
Host, no Origin) are served; a browser's foreign Origin is refused by the backend before the
tool runs; the services answer a foreign Host only with 421. Real ``mcp`` client for what must
work, raw HTTP for the attacks; the backend's refusal counter says who refused what."""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.e2e.mcp_http import UserTokens, call, post, rpc, session, text_of
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, SERVER_PLANS, LocalGateway

BACKEND_HOSTNAME = SERVER_PLANS[0].hostname

EVIL = "evil.example"


@pytest.fixture(scope="module")
async def tokens(local_gateway: LocalGateway) -> UserTokens:
    return UserTokens({user: local_gateway.user_token(user) for user in ("mcp",)})


async def _refused(gateway: LocalGateway, reason: str) -> float:
    """The backend's count of requests it refused for ``reason`` (from its /metrics)."""
    async with httpx2.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{gateway.services['backend'].url}/metrics")).text
    pattern = rf'^kmg_backend_host_origin_refused_total{{reason="{reason}"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


async def _pods(gateway: LocalGateway, token: str) -> str:
    async with session(gateway.mcp_url, token) as client:
        return text_of(
            await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
        )


async def test_the_gateways_host_is_accepted_and_a_foreign_host_is_not(
    local_gateway: LocalGateway, tokens: UserTokens
) -> None:
    hosts_refused = await _refused(local_gateway, "host_not_allowed")
    # Through the gateway: the broker's requests and the routed tools/call reach the backend
    # under whatever Host the gateway gives them, and are served.
    async with session(local_gateway.mcp_url, tokens["mcp"]) as client:
        tools = await client.list_tools()
        result = await client.call_tool("pods_list_in_namespace", {"namespace": DEMO_NAMESPACE})
    assert "pods_list_in_namespace" in [t.name for t in tools.tools]
    assert not result.is_error, text_of(result)
    assert "web-cluster-a" in text_of(result)
    # The backend's routing hostname (the real router's :authority for a tools/call) too.
    routed = await post(
        local_gateway.mcp_url,
        call("pods_list_in_namespace", namespace=DEMO_NAMESPACE),
        tokens["mcp"],
        {"Host": BACKEND_HOSTNAME},
    )
    assert routed.status_code == 200, routed.text
    assert "web-cluster-a" in routed.json()["result"]["content"][0]["text"]
    assert await _refused(local_gateway, "host_not_allowed") == hosts_refused
    # The rule is live: the backend listens on loopback and a DNS-rebound name is refused.
    backend = f"{local_gateway.services['backend'].url}/mcp"
    port = backend.rsplit(":", 1)[1].split("/")[0]
    rebound = await post(
        backend,
        call("pods_list_in_namespace", namespace=DEMO_NAMESPACE),
        tokens["mcp"],
        {"Host": f"{EVIL}:{port}", "Origin": f"http://{EVIL}:{port}"},
    )
    assert rebound.status_code == 421, rebound.text
    assert rebound.json()["error"] == "host_not_allowed"
    assert await _refused(local_gateway, "host_not_allowed") == hosts_refused + 1


async def test_a_foreign_origin_is_refused_before_the_tool_runs(
    local_gateway: LocalGateway, tokens: UserTokens
) -> None:
    before = await _pods(local_gateway, tokens["mcp"])
    pod = next(w for w in before.split() if w.startswith("web-cluster-a-"))
    origins_refused = await _refused(local_gateway, "origin_not_allowed")
    # A page of another site drives the user's browser (with a token it obtained) to delete a
    # pod through the gateway: the policy allows the tool to this user, the backend refuses
    # the Origin.
    attack = await post(
        local_gateway.mcp_url,
        call("pods_delete", namespace=DEMO_NAMESPACE, name=pod),
        tokens["mcp"],
        {"Origin": f"https://{EVIL}"},
    )
    assert attack.status_code == 403, attack.text
    assert attack.headers["content-type"].startswith("application/json")
    assert attack.json()["error"] == "origin_not_allowed"
    assert "allowed_origins" in attack.json()["message"]
    assert await _refused(local_gateway, "origin_not_allowed") == origins_refused + 1
    assert pod in await _pods(local_gateway, tokens["mcp"])
    # The gateway's own origin (the backend's resource_url) is served.
    gateway_origin = local_gateway.envoy.url
    served = await post(
        local_gateway.mcp_url,
        call("pods_list_in_namespace", namespace=DEMO_NAMESPACE),
        tokens["mcp"],
        {"Origin": gateway_origin},
    )
    assert served.status_code == 200, served.text
    assert pod in served.json()["result"]["content"][0]["text"]


async def test_plugin_endpoints_refuse_foreign_host_and_origin(
    local_gateway: LocalGateway,
) -> None:
    exchange = f"{local_gateway.services['token-exchange'].url}/token"
    policy = local_gateway.services["policy"].url
    async with httpx2.AsyncClient(timeout=30) as http:
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"}
        refused = await http.post(exchange, data=form, headers={"Origin": f"http://{EVIL}"})
        assert (refused.status_code, refused.json()["error"]) == (403, "origin_not_allowed")
        refused = await http.post(exchange, data=form, headers={"Host": EVIL})
        assert (refused.status_code, refused.json()["error"]) == (421, "host_not_allowed")
        # Without Origin the facade itself answers (here: no client authentication).
        answered = await http.post(exchange, data=form)
        assert (answered.status_code, answered.json()["error"]) == (401, "invalid_client")
        key = await http.get(f"{policy}/.well-known/jwks.json", headers={"Host": EVIL})
        assert (key.status_code, key.json()["allow"]) == (421, False)
        decide = await http.post(
            f"{policy}/v1/decide", json=rpc("tools/list"), headers={"Origin": f"http://{EVIL}"}
        )
        assert (decide.status_code, decide.json()["allow"]) == (403, False)
