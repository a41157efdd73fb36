"""Gateway sessions come from the broker and calls need one; only the router's own hairpin
initialize reaches a server. End to end through the local gateway with the REAL MCP Gateway
(broker/router v0.9.0), real Keycloak tokens of the demo users ``mcp`` and ``viewer`` (fixture
``tokens``: tests/e2e/conftest.py); the stack is described in ``test_gateway.py``.
"""

from __future__ import annotations

import json
import time

import jwt

from tests.e2e.gateway_logs import envoy_counter
from tests.e2e.mcp_http import (
    call,
    open_session,
    post,
    result_of,
    rpc,
)
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

PROMPT = "cluster-health-check"


# -- gateway sessions and the router's hairpin initialize -----------------------------------------
async def test_gateway_sessions_come_from_the_broker_and_calls_need_one(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    url, a = local_gateway.mcp_url, local_gateway.server_a
    listing = call(a.tool("pods_list_in_namespace"), namespace=DEMO_NAMESPACE)
    sid = await open_session(url, tokens["mcp"])
    # The broker's session id is a JWT it signed (GATEWAY_SIGNING_KEY); our backend has none.
    assert sid.count(".") == 2
    assert jwt.get_unverified_header(sid)["alg"].startswith("HS")
    ok = await post(url, listing, tokens["mcp"], session_id=sid)
    assert "web-cluster-a" in json.dumps(result_of(ok))
    # The router refuses a call without a session, or with one the broker did not sign.
    missing = await post(url, listing, tokens["mcp"])
    assert missing.status_code == 400
    assert "no session ID found" in missing.text
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256")
    bad = await post(url, listing, tokens["mcp"], session_id=forged)
    assert bad.status_code == 401
    assert "session no longer valid" in bad.text
    for resp in (missing, bad):
        assert "web-cluster-a" not in resp.text


async def test_only_the_routers_own_hairpin_initialize_reaches_a_server(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    """A client that sends an initialize dressed as the router's hairpin (``mcp-init-host`` of a
    server, a ``router-key`` it cannot sign) is refused by the router: the servers' virtual hosts
    are reached only through the router's own decisions."""
    url, b = local_gateway.mcp_url, local_gateway.server_b
    routed_to_b = f"cluster.{b.cluster}.upstream_rq_total"  # Envoy → server B, whatever the answer
    before = envoy_counter(local_gateway, routed_to_b)
    init = rpc(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {},
         "clientInfo": {"name": "x", "version": "1"}},
    )  # fmt: skip
    forged_key = jwt.encode({"host": b.hostname}, "k" * 32, algorithm="HS256")
    for headers in (
        {"mcp-init-host": b.hostname, "router-key": forged_key},
        {"mcp-init-host": b.hostname},
        {"Host": b.hostname},  # straight at a server's virtual host
    ):
        resp = await post(url, init, tokens["mcp"], headers)
        if "Host" in headers:
            # The router sets :authority to the gateway's own host first: this is the broker's
            # initialize, which opens a gateway session.
            assert resp.status_code == 200, resp.text
            assert resp.headers.get("mcp-session-id")
        else:
            assert resp.status_code == 400, (headers.keys(), resp.status_code, resp.text)
    assert envoy_counter(local_gateway, routed_to_b) == before
