"""Verified tokens are reused no longer than the validator trusts them, and issuers stay apart.

A local real issuer (``tests/gateway_plugins/common/issuer.py``: discovery + JWKS over HTTP, keys
the test holds) stands in for Keycloak where the test must rotate signing keys or run two
issuers that hand out the same ``sub``; Keycloak's realm keys are shared by the whole session.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.common.jwt_validation import IssuerConfig
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.service import service_of
from tests.gateway_plugins.common.issuer import LocalIssuer, new_rsa
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    SERVER,
    policy_settings,
    running_policy,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def issuers() -> AsyncIterator[tuple[LocalIssuer, LocalIssuer]]:
    first = await LocalIssuer(realm="policy-a").start()
    second = await LocalIssuer(realm="policy-b").start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def _trusting(settings: PolicySettings, *issuers: LocalIssuer, **auth: Any) -> PolicySettings:
    trusted = [
        *settings.auth.issuers,
        *(IssuerConfig(issuer=i.issuer, allow_any_audience=True) for i in issuers),
    ]
    return settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"issuers": trusted, **auth})}
    )


def _claims(issuer: LocalIssuer, sub: str) -> dict[str, Any]:
    return issuer.claims(sub, resource_access={SERVER: {"roles": ["pods_list"]}})


async def _call(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, Any]]:
    headers = {
        "Authorization": f"Bearer {token}",
        "x-mcp-method": "tools/call",
        "x-mcp-servername": SERVER,
        "x-mcp-toolname": "pods_list",
    }
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "pods_list", "arguments": {"namespace": "default"}}}
    )  # fmt: skip
    async with http.post(f"{url}/check/mcp", headers=headers, data=body) as resp:
        return resp.status, await resp.json()


async def test_a_token_whose_key_was_withdrawn_is_refused_after_the_recheck_interval(
    keycloak: Any, policy_work: Path, issuers: tuple[LocalIssuer, LocalIssuer]
) -> None:
    local, _ = issuers
    settings = _trusting(
        policy_settings(keycloak, policy_work / "rotation"),
        local,
        verified_cache_ttl_s=1.0,
        jwks_min_refetch_interval_s=0.0,
    )
    old = local.sign(_claims(local, "rotating-user"))  # kid rsa-1, valid for 5 minutes
    async with (
        running_policy(settings) as svc,
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
    ):
        status, payload = await _call(http, svc.url, old)
        assert (status, payload["allow"]) == (200, True), payload
        # The issuer rotates: rsa-1 is withdrawn. A token of the new key makes the service
        # refetch the JWKS (an unknown kid), so its key set no longer holds rsa-1.
        local.keys = {"rsa-2": new_rsa()}
        new = local.sign(_claims(local, "rotating-user"), kid="rsa-2")
        status, payload = await _call(http, svc.url, new)
        assert (status, payload["allow"]) == (200, True), payload
        await asyncio.sleep(1.3)
        # After the recheck interval the signature is checked again: its key is gone. (The
        # service used to reuse the claims until exp, five minutes here.)
        status, payload = await _call(http, svc.url, old)
        assert (status, payload["allow"]) == (401, False), payload
        assert payload["reason"] == (
            f"token refused: signing key 'rsa-1' is unknown to issuer {local.issuer}"
        )


async def test_two_issuers_with_the_same_subject_never_share_a_cached_answer(
    keycloak: Any, policy_work: Path, issuers: tuple[LocalIssuer, LocalIssuer]
) -> None:
    first, second = issuers
    settings = _trusting(policy_settings(keycloak, policy_work / "two-issuers"), first, second)
    sub = f"same-{uuid.uuid4().hex[:8]}"
    token_a = first.token(sub, resource_access={SERVER: {"roles": ["pods_list"]}})
    token_b = second.token(sub, resource_access={SERVER: {"roles": ["pods_list"]}})
    async with (
        running_policy(settings) as svc,
        aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
    ):
        engine = service_of(svc.app).engine.current  # in force (LiveEngine wraps it)
        assert isinstance(engine, EmbeddedEngine)
        assert (await _call(http, svc.url, token_a))[0] == 200
        hits = engine.cache_hits
        # Same sub, username and roles, another issuer: decided afresh, not from a's entry.
        assert (await _call(http, svc.url, token_b))[0] == 200
        assert engine.cache_hits == hits
        assert (await _call(http, svc.url, token_a))[0] == 200
        assert engine.cache_hits == hits + 1
        # The signed tool lists are cached per issuer too.
        for token in (token_a, token_b):
            headers = {
                "Authorization": f"Bearer {token}",
                "x-mcp-method": "tools/list",
                "x-mcp-servername": "mcpBroker",
            }
            async with http.post(f"{svc.url}/check/mcp", headers=headers) as resp:
                assert resp.status == 200
        assert len(service_of(svc.app)._wristbands) == 2
