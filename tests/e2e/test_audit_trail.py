"""One tool call followed through the three logs by one id (issue 16 item 4).

Through the local gateway (Envoy, the real MCP Gateway broker/router, our token exchange and
policy, the backend, cluster A's real API server with an audit policy): the backend's audit line
of the call names the caller, cluster, tool, arguments, outcome, duration and bytes under the
gateway's request id; the policy's decision log has the same request id; the API server's audit
log has the call's requests under ``auditID`` ``<request id>-<suffix>`` (the backend's
``Audit-ID`` header), with the identity the API server authenticated.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.mcp_http import call, open_session, post, result_of
from tests.testbed.mcp_gateway.stack import DEMO_NAMESPACE, LocalGateway

TOOL = "pods_list_in_namespace"


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            yield json.loads(line)


async def test_one_call_is_found_in_the_decision_backend_and_api_server_logs(
    local_gateway: LocalGateway,
) -> None:
    gateway, a = local_gateway, local_gateway.server_a
    token = gateway.user_token("mcp")
    trace = secrets.token_hex(16)
    traceparent = f"00-{trace}-{secrets.token_hex(8)}-01"
    sid = await open_session(gateway.mcp_url, token)
    resp = await post(
        gateway.mcp_url,
        call(a.tool(TOOL), namespace=DEMO_NAMESPACE),
        token,
        headers={"traceparent": traceparent},
        session_id=sid,
    )
    assert resp.status_code == 200, resp.text
    answer = "".join(c["text"] for c in result_of(resp)["content"] if c["type"] == "text")
    assert "web-cluster-a" in answer

    # the backend: one audit line for the call, found by the trace id the client sent
    (line,) = [
        e
        for e in json_lines(gateway.services["backend"].log_path)
        if e.get("audit") and e.get("trace_id") == trace
    ]
    rid = line["request_id"]
    assert rid not in ("", "-")
    assert line["tool"] == TOOL  # the un-prefixed name the backend serves
    assert line["cluster"] == "cluster-a"
    assert line["user"] == "mcp"
    assert line["arguments"] == {"namespace": DEMO_NAMESPACE}
    assert line["outcome"] == "ok"
    assert line["duration_ms"] > 0
    assert line["bytes"] == len(answer.encode())
    assert token not in json.dumps(line)

    # the policy: its decision on this very request
    decisions = [
        e
        for e in json_lines(gateway.gateway_dir / "policy-decisions.jsonl")
        if e.get("request_id") == rid and e.get("method") == "tools/call"
    ]
    assert decisions, f"no decision logged under request id {rid}"
    assert {d["decision"] for d in decisions} == {"allow"}
    assert {d["tool"] for d in decisions} == {TOOL}  # x-mcp-toolname, set by the router

    # the API server: the call's requests under auditID <rid>-<suffix>, as the user it authenticated
    events = [
        e
        for e in json_lines(gateway.cluster_a.audit_log)
        if str(e.get("auditID", "")).startswith(f"{rid}-")
    ]
    assert events, f"no API server audit event with auditID {rid}-*"
    listing = [e for e in events if e["verb"] == "list" and e["objectRef"]["resource"] == "pods"]
    assert listing, events
    assert listing[0]["objectRef"]["namespace"] == DEMO_NAMESPACE
    assert listing[0]["responseStatus"]["code"] == 200
    assert listing[0]["user"]["username"] == "mcp", listing[0]["user"]
    assert listing[0]["userAgent"].startswith("kube-mcp-gateway-backend/")
    assert len({e["auditID"] for e in events}) == len(events)  # one id per API request
