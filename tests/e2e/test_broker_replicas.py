"""Gateway sessions across TWO replicas of the real MCP Gateway broker/router (v0.9.0) that share
the testbed's real Redis (``--cache-connection-string``, issue 17 item 3).

The stack is ``replicated_gateway`` (``tests/testbed/fixtures_gateway.py``): our services, two
``mcp-broker-router`` processes with one ``GATEWAY_SIGNING_KEY`` and ``CACHE_CONNECTION_STRING``
pointing at Redis database ``BROKER_SESSION_DB``, and Envoy balancing round robin over them, both
the router's ext_proc streams and the broker's ``/mcp``.

What v0.9.0 shares and how (``tests/testbed/mcp_gateway/broker_router.py`` cites the sources):

* the gateway session itself is a JWT every replica validates alone, and a broker that has never
  seen a session re-creates it (``session_resurrection.go``): ``tools/list``, ``prompts/list``
  work on any replica, with or without Redis;
* what Redis shares is the router's map gateway session -> upstream session per server (one Redis
  hash keyed by the session JWT). With it, a server is initialized once per gateway session (one
  hairpin ``initialize``), whichever replica routes the calls; without it, every replica that
  routes a call initializes the server again (its own upstream session). The hairpin
  ``initialize`` goes through the policy like any request to a server, so the policy's decision
  log counts them;
* which replica served what is read from each replica's own log (the router's ``tool call``
  audit line carries the session's ``jti``) and, for the broker's answers, from the
  ``x-kmg-broker-replica`` header Envoy adds in a multi-replica stack.

The control (``test_without_redis_...``) restarts both replicas without the store: the same
session still works everywhere, but each replica initializes the servers again, so the assertion
the Redis tests make (one hairpin per server) fails there.

Who served what and the rounds that drive a session: ``tests/e2e/replica_sessions.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.e2e.gateway_logs import Hairpins
from tests.e2e.mcp_http import call, open_session, post, result_of, rpc
from tests.e2e.replica_sessions import (
    MAX_ROUNDS,
    SESSION_SECONDS,
    TOOL,
    RouterAudit,
    assert_served_everywhere,
    session_on_every_replica,
)
from tests.testbed.fixtures_gateway import BROKER_SESSION_DB
from tests.testbed.mcp_gateway.envoy_config import GatewayServer
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway
from tests.testbed.redis_server import RedisServer


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token(replicated_gateway: LocalGateway) -> str:
    return replicated_gateway.user_token("mcp")


@pytest.fixture
def sessions_db(redis_server: RedisServer) -> Any:
    """A redis-py client on the brokers' database (to look at what they store)."""
    client = redis_server.client(db=BROKER_SESSION_DB)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def in_memory_replicas(
    replicated_gateway: LocalGateway, redis_server: RedisServer
) -> Iterator[LocalGateway]:
    """The same two replicas restarted WITHOUT a session store, back on Redis afterwards."""
    replicated_gateway.set_session_store(None)
    try:
        yield replicated_gateway
    finally:
        replicated_gateway.set_session_store(redis_server.connection_string(BROKER_SESSION_DB))


# -- with Redis ----------------------------------------------------------------------------------
async def test_a_session_is_served_by_both_replicas_and_each_server_initialized_once(
    replicated_gateway: LocalGateway, token: str, sessions_db: Any
) -> None:
    gateway = replicated_gateway
    hairpins = Hairpins(gateway)
    served = await session_on_every_replica(gateway, token, sessions_db)
    assert_served_everywhere(served, gateway)
    # Shared: each server was initialized ONCE for this session although both replicas routed
    # calls to it; the other replica found the upstream session in Redis.
    assert hairpins.per_server() == {s.name: 1 for s in gateway.servers}
    # What Redis held while the session was open: its hash, keyed by the session JWT, one field
    # per server with the upstream session id (empty: our backends are stateless), expiring
    # with the JWT.
    assert served.stored == {s.name.encode(): b"" for s in gateway.servers}
    assert 0 < served.ttl <= SESSION_SECONDS
    # The client's DELETE (on exit), answered by one replica, removed it for every replica.
    assert len(served.recorder.answered_by("DELETE")) == 1
    assert sessions_db.exists(served.session_id) == 0


async def _call_on_every_replica(
    gateway: LocalGateway, token: str, session_id: str, server: GatewayServer
) -> list[httpx2.Response]:
    """``tools/call`` of ``server``'s tool in the session until every replica has routed one
    (their audit lines say which did; round robin makes it two calls, a few at most)."""
    audit, answers = RouterAudit(gateway), []
    request = call(server.tool(TOOL), namespace=DEMO_NAMESPACE)
    for _ in range(MAX_ROUNDS):
        answers.append(await post(gateway.mcp_url, request, token, session_id=session_id))
        if audit.routed_by(session_id, server.name) == set(gateway.brokers):
            return answers
    raise AssertionError(f"not every replica routed a call: {audit.tool_calls(session_id)}")


def _ran_on_its_cluster(answer: httpx2.Response, server: GatewayServer) -> None:
    result = result_of(answer)
    assert not result.get("isError"), result
    cluster = "web-cluster-a" if server.prefix == "a_" else "web-cluster-b"
    assert cluster in json.dumps(result)


async def test_upstream_sessions_survive_a_restart_of_every_replica(
    replicated_gateway: LocalGateway, token: str, sessions_db: Any, redis_server: RedisServer
) -> None:
    """A rolling restart of the brokers keeps the gateway session AND its upstream sessions: the
    calls after it need no new hairpin initialize, on either replica (in memory, a restarted
    replica would initialize each server again)."""
    gateway = replicated_gateway
    sid = await open_session(gateway.mcp_url, token)
    hairpins = Hairpins(gateway)
    for server in gateway.servers:
        for answer in await _call_on_every_replica(gateway, token, sid, server):
            _ran_on_its_cluster(answer, server)
    assert hairpins.per_server() == {s.name: 1 for s in gateway.servers}
    before = sessions_db.hgetall(sid)
    gateway.set_session_store(redis_server.connection_string(BROKER_SESSION_DB))  # restart both
    for server in gateway.servers:
        for answer in await _call_on_every_replica(gateway, token, sid, server):
            _ran_on_its_cluster(answer, server)
    assert hairpins.per_server() == {s.name: 1 for s in gateway.servers}, "initialized again"
    assert sessions_db.hgetall(sid) == before
    listed = await post(gateway.mcp_url, rpc("tools/list"), token, session_id=sid)
    assert gateway.server_a.tool(TOOL) in json.dumps(result_of(listed))


async def test_calls_fail_while_redis_is_down_and_work_again_when_it_returns(
    replicated_gateway: LocalGateway, token: str, sessions_db: Any, redis_server: RedisServer
) -> None:
    """v0.9.0 has no fallback: with Redis unreachable the router answers every call of a session
    with an error, on every replica (it cannot read the session's upstream map); the broker's
    lists, which need no store, keep working. When Redis is back (empty: it keeps nothing on
    disk) the next call initializes the server again and succeeds, in the same gateway
    session."""
    gateway = replicated_gateway
    a = gateway.server_a
    sid = await open_session(gateway.mcp_url, token)
    _ran_on_its_cluster(
        await post(gateway.mcp_url, call(a.tool(TOOL), namespace=DEMO_NAMESPACE), token,
                   session_id=sid),
        a,
    )  # fmt: skip
    hairpins = Hairpins(gateway)
    redis_server.stop()
    try:
        for down in await _call_on_every_replica(gateway, token, sid, a):
            assert down.status_code == 500, down.text
            assert "internal error" in down.text
        listed = await post(gateway.mcp_url, rpc("tools/list"), token, session_id=sid)
        assert a.tool(TOOL) in json.dumps(result_of(listed))
    finally:
        redis_server.start()
    for back in await _call_on_every_replica(gateway, token, sid, a):
        _ran_on_its_cluster(back, a)
    assert hairpins.per_server() == {a.name: 1}
    assert sessions_db.hgetall(sid) == {a.name.encode(): b""}


async def test_a_deleted_session_clears_the_shared_map_but_its_id_stays_valid(
    replicated_gateway: LocalGateway, token: str, sessions_db: Any
) -> None:
    """DELETE on one replica removes the session's upstream map for every replica (Redis), so the
    next call initializes the server again, once; v0.9.0 keeps no revocation list, so the JWT
    still opens the session on any replica until it expires (a limit, see the README)."""
    gateway = replicated_gateway
    a = gateway.server_a
    sid = await open_session(gateway.mcp_url, token)
    for answer in await _call_on_every_replica(gateway, token, sid, a):
        _ran_on_its_cluster(answer, a)
    assert sessions_db.exists(sid) == 1
    async with httpx2.AsyncClient(timeout=30) as http:
        deleted = await http.delete(
            gateway.mcp_url,
            headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": sid},
        )
    assert deleted.status_code == 200, deleted.text
    assert sessions_db.exists(sid) == 0
    hairpins = Hairpins(gateway)
    for again in await _call_on_every_replica(gateway, token, sid, a):
        _ran_on_its_cluster(again, a)
    assert hairpins.per_server() == {a.name: 1}
    assert sessions_db.hgetall(sid) == {a.name.encode(): b""}


# -- the control: the same replicas without a session store ---------------------------------------
async def test_without_redis_the_session_still_works_but_each_replica_initializes_again(
    in_memory_replicas: LocalGateway, token: str, sessions_db: Any
) -> None:
    """Same session, same requests, replicas without ``CACHE_CONNECTION_STRING``: every answer is
    still right (the session is a JWT every replica accepts, and the broker resurrects sessions
    it has not seen), but nothing is shared: every replica that routes a call to a server opens
    its own upstream session (one hairpin initialize each), and Redis holds nothing. With a
    stateful server that is a second upstream session, and its state, per replica."""
    gateway = in_memory_replicas
    hairpins = Hairpins(gateway)
    served = await session_on_every_replica(gateway, token, sessions_db)
    assert_served_everywhere(served, gateway)
    per_server = hairpins.per_server()
    for server in gateway.servers:
        replicas = served.audit.routed_by(served.session_id, server.name)
        assert per_server[server.name] == len(replicas) == len(gateway.brokers), per_server
    assert per_server != {s.name: 1 for s in gateway.servers}  # what the Redis tests assert
    assert served.stored == {}
    assert served.ttl == -2  # no such key
