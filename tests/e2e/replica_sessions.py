"""One client session driven over the TWO replicas of the replicated gateway, and who served
what: the answers the real ``mcp`` client saw (with the replica header Envoy adds), the routers'
``tool call`` audit lines (by the session's ``jti``), and rounds of lists, prefixed calls and
prompts until both replicas have served the session every way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.gateway_logs import envoy_requests
from tests.testbed.mcp_gateway.envoy_config import BROKER_REPLICA_HEADER
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

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


def result_text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def one_round(client: Client, gateway: LocalGateway, *, extra: bool) -> None:
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
    assert not on_a.is_error, result_text(on_a)
    assert "web-cluster-a" in result_text(on_a)
    on_b = await client.call_tool(b.tool(TOOL), {"namespace": DEMO_NAMESPACE})
    assert not on_b.is_error, result_text(on_b)
    assert "web-cluster-b" in result_text(on_b)
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert a.tool(PROMPT) in prompts
    got = await client.get_prompt(a.tool(PROMPT), {})
    assert got.messages, "the prompt came back empty"


def spread(recorder: Recorder, audit: RouterAudit, gateway: LocalGateway) -> bool:
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


async def session_on_every_replica(gateway: LocalGateway, token: str, db: Any) -> Served:
    """Rounds of :func:`one_round` in one client session until both replicas have answered its
    broker requests and routed its calls to both servers (at most :data:`MAX_ROUNDS`)."""
    recorder, audit = Recorder.of(gateway), RouterAudit(gateway)
    async with recorded_client(gateway.mcp_url, token, recorder) as client:
        for number in range(MAX_ROUNDS):
            await one_round(client, gateway, extra=number % 2 == 1)
            if spread(recorder, audit, gateway):
                break
        sid = recorder.session_id
        stored, ttl = db.hgetall(sid), db.ttl(sid)
    return Served(recorder, audit, stored, ttl)


def assert_served_everywhere(served: Served, gateway: LocalGateway) -> None:
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
