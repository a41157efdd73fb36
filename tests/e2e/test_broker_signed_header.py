"""The signed header (wristband) at the real broker: which header forms v0.9.0 reads, and a foreign
or expired signature refused. End to end through the local gateway with the REAL MCP Gateway
(broker/router v0.9.0), real Keycloak tokens of the demo users ``mcp`` and ``viewer`` (fixture
``tokens``: tests/e2e/conftest.py); the stack is described in ``test_gateway.py``.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway_plugins.policy.wristband import WristbandForm, WristbandSigner
from tests.e2e.mcp_http import (
    listed_names,
    open_session,
    post,
    result_of,
    rpc,
)
from tests.testbed.mcp_gateway.stack import LocalGateway

PROMPT = "cluster-health-check"


# -- 3. the signed header at the real broker ------------------------------------------------------
@pytest.fixture(scope="module")
def policy_signer(local_gateway: LocalGateway) -> WristbandSigner:
    """The policy service's own signing key (the broker trusts its public key)."""
    from gateway_plugins.policy.wristband import load_signing_key

    key = load_signing_key(local_gateway.gateway_dir / "secrets" / "wristband-signing.key")
    return WristbandSigner(key)


@pytest.mark.parametrize(
    ("forms", "listed"),
    [
        pytest.param((), False, id="no header"),
        pytest.param((WristbandForm.CURRENT,), True, id="x-mcp-authorized"),
        pytest.param((WristbandForm.LEGACY,), False, id="x-authorized-tools only"),
        pytest.param((WristbandForm.BOTH,), True, id="both forms"),
    ],
)
async def test_the_real_broker_reads_the_signed_header_forms(
    local_gateway: LocalGateway,
    tokens: dict[str, str],
    policy_signer: WristbandSigner,
    forms: tuple[WristbandForm, ...],
    listed: bool,
) -> None:
    """Straight at the broker (as Envoy would forward after auth), with
    ``--enforce-capability-filtering``: v0.9.0 reads ``x-mcp-authorized`` (claim
    ``allowed-capabilities``) only; the older ``x-authorized-tools`` alone lists nothing."""
    a, b = local_gateway.server_a, local_gateway.server_b
    broker = local_gateway.broker_url
    sid = await open_session(broker, tokens["mcp"])
    headers: dict[str, str] = {}
    for form in forms:
        headers.update(
            policy_signer.sign(
                {a.name: ["pods_list", "pods_get"], b.name: ["events_list"]},
                prompts={b.name: [PROMPT]},
                form=form,
            ).headers
        )
    tools = listed_names(await post(broker, rpc("tools/list"), tokens["mcp"], headers, sid))
    prompts = await post(broker, rpc("prompts/list"), tokens["mcp"], headers, sid)
    prompt_names = sorted(p["name"] for p in result_of(prompts)["prompts"])
    if listed:
        assert tools == sorted([a.tool("pods_get"), a.tool("pods_list"), b.tool("events_list")])
        assert prompt_names == [b.tool(PROMPT)]
    else:
        assert tools == []
        assert prompt_names == []


async def test_the_real_broker_refuses_a_foreign_or_expired_signed_header(
    local_gateway: LocalGateway, tokens: dict[str, str], policy_signer: WristbandSigner
) -> None:
    a = local_gateway.server_a
    broker = local_gateway.broker_url
    sid = await open_session(broker, tokens["mcp"])
    grant = {a.name: ["pods_list"]}
    foreign = WristbandSigner(ec.generate_private_key(ec.SECP256R1()), form=WristbandForm.CURRENT)
    cases = {
        "good": policy_signer.sign(grant, form=WristbandForm.CURRENT).headers,
        "foreign key": foreign.sign(grant).headers,
        "expired": policy_signer.sign(
            grant, form=WristbandForm.CURRENT, now=time.time() - 3600
        ).headers,
    }
    listed = {
        case: listed_names(await post(broker, rpc("tools/list"), tokens["mcp"], headers, sid))
        for case, headers in cases.items()
    }
    assert listed == {"good": [a.tool("pods_list")], "foreign key": [], "expired": []}
