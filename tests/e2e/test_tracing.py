"""One trace across the gateway (issue 16).

A ``tools/call`` through the local gateway with a client's W3C ``traceparent`` is found in the
testbed's real Jaeger as ONE trace holding spans of Envoy, the token exchange (and its Keycloak
call), the policy service and the backend (and its API server call), each under the right parent;
the API server's own trace links to the backend's call and names the audit event of that request
(the backend's ``Audit-ID``); the decision log and the backend's audit line carry the trace id. No
span carries the user's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.mcp_http import call, open_session, post, result_of
from tests.testbed.jaeger import Jaeger
from tests.testbed.mcp_gateway.envoy_config import TRACE_SERVICE_NAME
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

TOOL = "pods_list_in_namespace"
BACKEND = "mcp-backend"
EXCHANGE = "mcp-token-exchange"
POLICY = "mcp-policy"
APISERVER = "apiserver"  # service.name of kube-apiserver's spans


@dataclass(frozen=True)
class Span:
    span_id: str
    trace_id: str
    parent: str | None
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of FOLLOWS_FROM references
    service: str
    name: str
    start: int  # microseconds
    tags: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.tags.get("span.kind", ""))


def spans_of(trace: dict[str, Any]) -> list[Span]:
    """Jaeger's JSON trace as :class:`Span` objects."""
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    out = []
    for raw in trace["spans"]:
        refs = raw.get("references") or []
        parent = next((r["spanID"] for r in refs if r["refType"] == "CHILD_OF"), None)
        links = tuple((r["traceID"], r["spanID"]) for r in refs if r["refType"] == "FOLLOWS_FROM")
        out.append(
            Span(
                span_id=raw["spanID"],
                trace_id=raw["traceID"],
                parent=parent,
                links=links,
                service=services[raw["processID"]],
                name=raw["operationName"],
                start=raw["startTime"],
                tags={t["key"]: t["value"] for t in raw.get("tags") or []},
            )
        )
    return out


def ancestors(span: Span, by_id: dict[str, Span]) -> Iterator[Span]:
    current = by_id.get(span.parent or "")
    while current is not None:
        yield current
        current = by_id.get(current.parent or "")


def one(spans: list[Span], what: str, **match: Any) -> Span:
    """The single span with these attributes (service, kind, ...); a clear error otherwise."""
    found = [
        s
        for s in spans
        if all((getattr(s, k) if hasattr(s, k) else s.tags.get(k)) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"{what}: expected one span matching {match}, got {found}"
    return found[0]


def linked_apiserver_span(jaeger: Jaeger, client: Span, since_us: int) -> Span:
    """The API server's span linked to the backend's ``client`` call (waits for the export)."""
    deadline = time.monotonic() + 30
    while True:
        for trace in jaeger.find_traces(APISERVER, limit=1000, lookback="10m"):
            for span in spans_of(trace):
                if span.start >= since_us and (client.trace_id, client.span_id) in span.links:
                    return span
        assert time.monotonic() < deadline, (
            f"no API server span links to the backend's call {client.name} ({client.span_id})"
        )
        time.sleep(1)


async def test_one_tools_call_is_one_trace_from_envoy_to_the_api_server(
    local_gateway: LocalGateway, trace_collector: Jaeger
) -> None:
    url = local_gateway.mcp_url
    tool = local_gateway.tool(TOOL)
    # The session and its first call (the router's hairpin initialize, the token exchange's
    # cached token) with one login; the traced call with a fresh login of the same user, so the
    # token exchange has no cached token for it and asks Keycloak within the trace.
    warm = local_gateway.user_token("mcp")
    session_id = await open_session(url, warm)
    result_of(await post(url, call(tool, namespace=DEMO_NAMESPACE), warm, session_id=session_id))
    token = local_gateway.user_token("mcp")
    assert token != warm

    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    since_us = int(time.time() * 1_000_000)
    resp = await post(
        url,
        call(tool, namespace=DEMO_NAMESPACE),
        token,
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        session_id=session_id,
    )
    result = result_of(resp)
    assert not result.get("isError"), result
    assert "web-cluster-a" in result["content"][0]["text"]

    services = {TRACE_SERVICE_NAME, EXCHANGE, POLICY, BACKEND}
    trace = trace_collector.wait_trace(trace_id, services=services)

    # Each exporter batches: a span can arrive after its children (Envoy's request span ends
    # last, with the response). Wait for the backend's API server call and Envoy's request span.
    def complete(spans: list[Span]) -> bool:
        return any(s.kind == "client" and s.service == BACKEND for s in spans) and any(
            s.service == TRACE_SERVICE_NAME and s.parent == client_span for s in spans
        )

    deadline = time.monotonic() + 30
    while not complete(spans_of(trace)):
        assert time.monotonic() < deadline, "the backend's API call or Envoy's span never arrived"
        await asyncio.sleep(0.5)
        trace = trace_collector.wait_trace(trace_id, services=services)
    spans = spans_of(trace)
    by_id = {s.span_id: s for s in spans}

    # Envoy continues the client's trace: its request span is the child of the client's span.
    envoy_root = one(spans, "Envoy's request span", service=TRACE_SERVICE_NAME, parent=client_span)
    # The checks and the backend each sit under Envoy's request span (through its check and
    # upstream spans), never beside it.
    exchange = one(spans, "token exchange check", service=EXCHANGE, kind="server")
    policy = one(spans, "policy check", service=POLICY, kind="server")
    backend = one(spans, "backend tools/call", service=BACKEND, kind="server")
    for span in (exchange, policy, backend):
        chain = list(ancestors(span, by_id))
        assert envoy_root in chain, (span.service, span.name, [s.name for s in chain])
        assert chain[0].service == TRACE_SERVICE_NAME, (span.service, chain[0])

    # Token exchange: validated the user, asked Keycloak (a fresh token: no cached exchange).
    assert exchange.tags["enduser.id"] == "mcp"
    assert exchange.tags["mcp.server.name"] == local_gateway.server_a.name
    keycloak = one(spans, "Keycloak exchange call", service=EXCHANGE, kind="client")
    assert keycloak.parent == exchange.span_id
    assert keycloak.tags["url.path"].endswith("/protocol/openid-connect/token")
    assert keycloak.tags["http.response.status_code"] == 200

    # Policy: the decision, on the router's headers.
    assert policy.tags["kmg.decision"] == "allow"
    assert policy.tags["gen_ai.tool.name"] == TOOL
    assert policy.tags["enduser.id"] == "mcp"

    # Backend: the tool call and, under it, its API server request.
    assert backend.name == f"tools/call {TOOL}"
    assert backend.tags["gen_ai.tool.name"] == TOOL
    assert backend.tags["k8s.cluster.name"] == "cluster-a"
    assert backend.tags["enduser.id"] == "mcp"
    assert backend.tags["kmg.outcome"] == "ok"
    api_call = one(spans, "backend's API server call", service=BACKEND, kind="client")
    assert api_call.parent == backend.span_id
    assert api_call.tags["url.path"] == f"/api/v1/namespaces/{DEMO_NAMESPACE}/pods"

    # The gateway runs its checks before it routes: exchange, then policy, then the backend.
    assert exchange.start <= policy.start <= backend.start

    # The API server got the backend's traceparent: it starts its own trace for a user outside
    # system:masters / system:monitoring and links it to the backend's call.
    apiserver = linked_apiserver_span(trace_collector, api_call, since_us)
    assert apiserver.service == APISERVER
    assert apiserver.trace_id != trace_id
    # ... and its span names the audit event: the Audit-ID the backend sent for this call
    # (``<request id>-<6 hex>``, see mcp_backend/audit.py)
    assert str(apiserver.tags["audit-id"]).startswith(backend.tags["kmg.request_id"] + "-")

    # The trace id is in the policy's decision and in the backend's audit line of the call.
    decisions = [
        line
        for line in _json_lines(local_gateway.gateway_dir / "policy-decisions.jsonl")
        if line.get("trace_id") == trace_id and line.get("method") == "tools/call"
    ]
    assert [(d["tool"], d["decision"]) for d in decisions] == [(TOOL, "allow")]
    audits = [
        line
        for line in _json_lines(local_gateway.services["backend"].log_path)
        if line.get("audit") is True and line.get("trace_id") == trace_id
    ]
    assert [(a["tool"], a["user"], a["outcome"]) for a in audits] == [(TOOL, "mcp", "ok")]
    assert audits[0]["request_id"] == backend.tags["kmg.request_id"]

    # No span attribute holds the user's token (nor any bearer credential).
    for span in spans:
        for key, value in span.tags.items():
            text = str(value)
            assert token not in text, (span.name, key)
            assert warm not in text, (span.name, key)
            assert "Bearer " not in text, (span.name, key)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(line))
    return lines
