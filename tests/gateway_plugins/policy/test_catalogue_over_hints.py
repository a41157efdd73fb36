"""Issue 14 item 5: the policy trusted ``x-mcp-annotation-hints`` over its own catalogue. A
read-only grant then covered any tool a request claimed to be read-only: ``pods_delete`` with
``readOnly=true`` was allowed. Now a tool's annotations come from the catalogue (the servers' own
tools/list) whenever it knows the tool; a hint only counts for a tool it does not know.

The user holds the ``read-only`` client role of the server (the one grant that reads
annotations). The demo realm grants tools by name only, so a real local issuer (its keys held by
the test, trusted by the service for its audience) signs that user's token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.common.jwt_validation import IssuerConfig
from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)

pytestmark = pytest.mark.timeout(300)

AUDIENCE = "mcp-gateway"
UNKNOWN_TOOL = "pods_describe"  # not in the service's catalogue


@pytest.fixture(scope="module")
async def issuer() -> AsyncIterator[LocalIssuer]:
    local = await LocalIssuer(realm="read-only-users").start()
    try:
        yield local
    finally:
        await local.close()


@pytest.fixture(scope="module")
async def service(
    keycloak: Any, policy_work: Path, issuer: LocalIssuer
) -> AsyncIterator[RunningPolicy]:
    settings = policy_settings(keycloak, policy_work / "catalogue-over-hints")
    trusted = [*settings.auth.issuers, IssuerConfig(issuer=issuer.issuer, audiences=[AUDIENCE])]
    settings = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"issuers": trusted})}
    )
    async with running_policy(settings) as running:
        yield running


@pytest.fixture(scope="module")
def reader(issuer: LocalIssuer) -> str:
    """A user whose only grant is the server's read-only role."""
    return issuer.token(
        "reader", aud=[AUDIENCE], resource_access={SERVER: {"roles": ["read-only"]}}
    )


async def _check(svc: RunningPolicy, token: str, tool: str, hints: str | None) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {token}",
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": tool,
        **CALLER_HEADERS,
    }
    if hints is not None:
        headers["x-mcp-annotation-hints"] = hints
    arguments = {"namespace": "default", "name": "p"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}  # fmt: skip
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{svc.url}/check/mcp", headers=headers, data=json.dumps(body)) as resp,
    ):
        answer: dict[str, Any] = await resp.json()
        assert resp.status == (200 if answer["allow"] else 403), answer
        return answer


async def _decide(svc: RunningPolicy, token: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
        http.post(
            f"{svc.url}/v1/decide",
            json={"server": SERVER, **body},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


def _not_granted(tool: str) -> str:
    return f"reader holds no role of {SERVER} that grants tool {tool}"


def _read_only(tool: str) -> str:
    return f"reader holds role read-only of {SERVER} and {tool} is read-only"


async def test_a_hint_claiming_read_only_does_not_change_a_known_tools_decision(
    service: RunningPolicy, reader: str
) -> None:
    """The attack: the catalogue says pods_delete changes things; the request says read-only."""
    for hints in ("readOnly=true", "readOnly=true,destructive=false", "readonlyhint=TRUE"):
        answer = await _check(service, reader, "pods_delete", hints)
        assert (answer["allow"], answer["reason"]) == (False, _not_granted("pods_delete")), hints
    for body in (
        {"tool": "pods_delete", "annotation_hints": "readOnly=true,destructive=false"},
        {"tool": "pods_delete", "annotations": {"readOnlyHint": True, "destructiveHint": False}},
    ):
        answer = await _decide(service, reader, body)
        assert (answer["allow"], answer["reason"]) == (False, _not_granted("pods_delete")), body


async def test_a_hint_denying_read_only_does_not_change_it_either(
    service: RunningPolicy, reader: str
) -> None:
    """The catalogue wins both ways: pods_list is read-only whatever the request says."""
    for hints in (None, "readOnly=false", "readOnly=false,destructive=true"):
        answer = await _check(service, reader, "pods_list", hints)
        assert (answer["allow"], answer["reason"]) == (True, _read_only("pods_list")), hints
    answer = await _decide(
        service, reader, {"tool": "pods_list", "annotation_hints": "readOnly=false"}
    )
    assert (answer["allow"], answer["reason"]) == (True, _read_only("pods_list"))


async def test_hints_still_apply_to_a_tool_the_catalogue_does_not_know(
    service: RunningPolicy, reader: str
) -> None:
    answer = await _check(service, reader, UNKNOWN_TOOL, "readOnly=true")
    assert (answer["allow"], answer["reason"]) == (True, _read_only(UNKNOWN_TOOL))
    for hints in (None, "readOnly=false", "readOnly=unspecified"):
        answer = await _check(service, reader, UNKNOWN_TOOL, hints)
        assert (answer["allow"], answer["reason"]) == (False, _not_granted(UNKNOWN_TOOL)), hints
    answer = await _decide(
        service, reader, {"tool": UNKNOWN_TOOL, "annotations": {"readOnlyHint": True}}
    )
    assert (answer["allow"], answer["reason"]) == (True, _read_only(UNKNOWN_TOOL))
