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
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.mcp_http import call, open_session, post, result_of, rpc
from tests.testbed.fixtures_gateway import BROKER_SESSION_DB
from tests.testbed.mcp_gateway.envoy_config import BROKER_REPLICA_HEADER, GatewayServer
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway
from tests.testbed.redis_server import RedisServer

TOOL = "pods_list_in_namespace"
PROMPT = "cluster-health-check"
BROKER_METHODS = ("tools/list", "prompts/list")  # answered by the broker itself, not a server
MAX_ROUNDS = 8  # round robin alternates; both replicas have served every kind well before this
SESSION_SECONDS = 24 * 3600  # the broker's default --session-length (24 h): the JWT's lifetime


# -- who served what ----------------------------------------------------------------------------
def jti(session_id: str) -> str:
    """The ``jti`` claim of a gateway session JWT (what the replicas log instead of the id)."""
    payload = session_id.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


@dataclass
class Exchange:
    method: str  # the JSON-RPC method of a POST, or the HTTP method
    status: int
    replica: str | None  # the broker replica that answered (None: not the broker's route)


@dataclass
class Recorder:
    """An ``httpx2`` response hook: each exchange of a client, and the session id it was given."""

    replicas: dict[str, str]  # "127.0.0.1:<broker port>" -> replica name
    exchanges: list[Exchange] = field(default_factory=list)
    session_id: str = ""

    @classmethod
    def of(cls, gateway: LocalGateway) -> Recorder:
        return cls({f"127.0.0.1:{p.broker}": name for name, p in gateway.brokers.items()})

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        method = request.method
        if method == "POST" and request.content:
            method = str(json.loads(request.content).get("method", "POST"))
        address = response.headers.get(BROKER_REPLICA_HEADER)
        replica = self.replicas.get(address) if address else None
        if address and replica is None:
            raise AssertionError(f"{BROKER_REPLICA_HEADER}: {address} is no broker replica")
        self.exchanges.append(Exchange(method, response.status_code, replica))
        if sid := response.headers.get("mcp-session-id"):
            self.session_id = sid

    def answered_by(self, method: str) -> list[str]:
        """The broker replicas that answered ``method``, in order."""
        return [e.replica for e in self.exchanges if e.method == method and e.replica]


class RouterAudit:
    """The router's ``tool call`` audit lines of each replica's log, from a point on."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.logs = {name: gateway.services[name].log_path for name in gateway.brokers}
        self.start = {name: path.stat().st_size for name, path in self.logs.items()}

    def tool_calls(self, session_id: str) -> list[tuple[str, str, str, str]]:
        """``(replica, server, tool, status)`` of the session's routed ``tools/call``s."""
        wanted = f"jti:{jti(session_id)}"
        found = []
        for name, path in self.logs.items():
            with path.open("rb") as f:
                f.seek(self.start[name])
                lines = f.read().decode(errors="replace").splitlines()
            for line in lines:
                entry = json.loads(line) if line.startswith("{") else {}
                if entry.get("msg") == "tool call" and entry.get("session") == wanted:
                    found.append((name, entry["server"], entry["tool"], entry["status"]))
        return found

    def routed_by(self, session_id: str, server: str) -> set[str]:
        return {r for r, s, _, status in self.tool_calls(session_id) if s == server}


class Hairpins:
    """Hairpin ``initialize``s the policy allowed (one per server initialization), from a point
    on: the router's ``initialize`` reaches a server's route, where the policy runs on it."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.path = gateway.gateway_dir / "policy-decisions.jsonl"
        self.start = self.path.stat().st_size

    def per_server(self) -> Counter[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            lines = f.read().decode().splitlines()
        decisions = [json.loads(line) for line in lines if line.strip()]
        return Counter(
            d["server"]
            for d in decisions
            if d["method"] == "initialize" and d["server"] != "mcpBroker"
        )


def envoy_requests(gateway: LocalGateway, cluster: str) -> dict[str, int]:
    """Requests (ext_proc streams for the router) Envoy sent to each replica of ``cluster``."""
    ports = {
        str(p.router if cluster == "mcp_router" else p.broker): name
        for name, p in gateway.brokers.items()
    }
    url = f"{gateway.envoy.admin_url}/clusters"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback admin
        text = resp.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total":
            counts[ports[parts[1].rsplit(":", 1)[1]]] = int(parts[3])
    return counts


# -- clients ------------------------------------------------------------------------------------
@asynccontextmanager
async def recorded_client(url: str, token: str, recorder: Recorder) -> AsyncIterator[Client]:
    """The real ``mcp`` client, every answer seen by ``recorder`` (DELETE on exit, as always)."""
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            event_hooks={"response": [recorder.on_response]},
        ) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def _one_round(client: Client, gateway: LocalGateway, *, extra: bool) -> None:
    """Lists, a prefixed call on each server, the prompts: every answer right. ``extra`` adds one
    broker request (a second ``tools/list``): rounds alternate with and without it, so that
    round robin (which alternates request by request) hands each kind of request to each
    replica within a few rounds."""
    a, b = gateway.server_a, gateway.server_b
    if extra:
        assert (await client.list_tools()).tools
    listed = {t.name for t in (await client.list_tools()).tools}
    assert {a.tool(TOOL), b.tool(TOOL)} <= listed
    on_a = await client.call_tool(a.tool(TOOL), {"namespace": DEMO_NAMESPACE})
    assert not on_a.is_error, _text(on_a)
    assert "web-cluster-a" in _text(on_a)
    on_b = await client.call_tool(b.tool(TOOL), {"namespace": DEMO_NAMESPACE})
    assert not on_b.is_error, _text(on_b)
    assert "web-cluster-b" in _text(on_b)
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert a.tool(PROMPT) in prompts
    got = await client.get_prompt(a.tool(PROMPT), {})
    assert got.messages, "the prompt came back empty"


def _spread(recorder: Recorder, audit: RouterAudit, gateway: LocalGateway) -> bool:
    """Both replicas answered the session's broker requests and routed its calls to A and B."""
    everyone = set(gateway.brokers)
    sid = recorder.session_id
    return all(set(recorder.answered_by(method)) == everyone for method in BROKER_METHODS) and all(
        audit.routed_by(sid, s.name) == everyone for s in gateway.servers
    )


@dataclass
class Served:
    """One client session driven until both replicas served it every way."""

    recorder: Recorder
    audit: RouterAudit
    stored: dict[bytes, bytes]  # the session's Redis hash while it was open
    ttl: int  # its TTL then (seconds; -2: no such key)

    @property
    def session_id(self) -> str:
        return self.recorder.session_id


async def _session_on_every_replica(gateway: LocalGateway, token: str, db: Any) -> Served:
    """Rounds of :func:`_one_round` in one client session until both replicas have answered its
    broker requests and routed its calls to both servers (at most :data:`MAX_ROUNDS`)."""
    recorder, audit = Recorder.of(gateway), RouterAudit(gateway)
    async with recorded_client(gateway.mcp_url, token, recorder) as client:
        for number in range(MAX_ROUNDS):
            await _one_round(client, gateway, extra=number % 2 == 1)
            if _spread(recorder, audit, gateway):
                break
        sid = recorder.session_id
        stored, ttl = db.hgetall(sid), db.ttl(sid)
    return Served(recorder, audit, stored, ttl)


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


def _assert_served_everywhere(served: Served, gateway: LocalGateway) -> None:
    """The session began on one replica and both replicas then served it, every answer a
    success (the rounds assert each result)."""
    everyone = set(gateway.brokers)
    recorder, sid = served.recorder, served.session_id
    assert sid, "the gateway gave no session id"
    (first,) = recorder.answered_by("initialize")
    others = everyone - {first}
    # the broker's own /mcp: the session created on `first` is answered by the other replica
    for method in BROKER_METHODS:
        assert set(recorder.answered_by(method)) == everyone, (method, recorder.exchanges)
    assert others & set(recorder.answered_by("tools/list"))
    assert all(e.status in (200, 202) for e in recorder.exchanges if e.method != "DELETE")
    # the router: both replicas routed this session's calls to both servers, all answered 200
    calls = served.audit.tool_calls(sid)
    assert {(replica, server) for replica, server, _, _ in calls} == {
        (replica, server.name) for replica in everyone for server in gateway.servers
    }, calls
    assert {status for *_, status in calls} == {"200"}, calls
    # Envoy balanced both clusters over both replicas
    for cluster in ("mcp_router", "mcp_broker"):
        assert all(n > 0 for n in envoy_requests(gateway, cluster).values()), cluster


# -- with Redis ----------------------------------------------------------------------------------
async def test_a_session_is_served_by_both_replicas_and_each_server_initialized_once(
    replicated_gateway: LocalGateway, token: str, sessions_db: Any
) -> None:
    gateway = replicated_gateway
    hairpins = Hairpins(gateway)
    served = await _session_on_every_replica(gateway, token, sessions_db)
    _assert_served_everywhere(served, gateway)
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
    served = await _session_on_every_replica(gateway, token, sessions_db)
    _assert_served_everywhere(served, gateway)
    per_server = hairpins.per_server()
    for server in gateway.servers:
        replicas = served.audit.routed_by(served.session_id, server.name)
        assert per_server[server.name] == len(replicas) == len(gateway.brokers), per_server
    assert per_server != {s.name: 1 for s in gateway.servers}  # what the Redis tests assert
    assert served.stored == {}
    assert served.ttl == -2  # no such key
