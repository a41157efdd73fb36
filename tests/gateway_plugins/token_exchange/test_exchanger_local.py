"""Exchanger paths that never reach a token service, against a real local issuer.

The STS here is a closed port on 127.0.0.1 (a real "connection refused"), so any call to it would
show up in the STS call metric; the Keycloak-backed behaviour is in ``test_keycloak_integration``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import InvalidToken, IssuerConfig, JWTValidator
from gateway_plugins.token_exchange.cache_config import CacheConfig
from gateway_plugins.token_exchange.config import BreakerConfig
from gateway_plugins.token_exchange.exchanger import Exchanger
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.sts_client import STSClient, STSUnavailable
from gateway_plugins.token_exchange.sts_config import StepConfig, STSConfig, TargetConfig
from gateway_plugins.token_exchange.targets import TargetRegistry, UnknownTarget
from tests.gateway_plugins.common.issuer import LocalIssuer, new_rsa
from tests.testbed.ports import free_port

BACKEND = "mcp-test/kubernetes-mcp"


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer("mcp").start()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(timeout_s=2.0)
    yield client
    await client.close()


def _exchanger(
    issuer: LocalIssuer, session: aiohttp.ClientSession, **kwargs: Any
) -> tuple[Exchanger, ExchangeMetrics]:
    metrics = ExchangeMetrics(CollectorRegistry())
    closed = f"http://127.0.0.1:{free_port()}/realms/mcp/protocol/openid-connect/token"
    sts_cfg = STSConfig(token_url=closed, client_id="mcp-gateway", client_secret_env="UNUSED")
    sts = STSClient(
        "mcp",
        sts_cfg,
        session,
        client_secret="not-a-real-secret",
        breaker=BreakerConfig(failures=2, cooldown_s=30),
        metrics=metrics,
    )
    targets = TargetRegistry(
        [
            TargetConfig(audience=BACKEND, steps=[StepConfig(sts="mcp")]),
            TargetConfig(audience="no-exchange"),
            TargetConfig(
                audience="gateway-only",
                steps=[StepConfig(sts="mcp")],
                subject_audiences=["mcp-gateway"],
            ),
        ]
    )
    validator = JWTValidator(
        [IssuerConfig(issuer=issuer.issuer, allow_any_audience=True)],
        JWKSCache(session, min_refetch_interval_s=0),
    )
    exchanger = Exchanger(
        validator=validator,
        targets=targets,
        sts={"mcp": sts},
        cache=CacheConfig(),
        metrics=metrics,
        **kwargs,
    )
    return exchanger, metrics


def _bad_tokens(issuer: LocalIssuer) -> dict[str, str]:
    now = int(time.time())
    return {
        "expired": issuer.token(iat=now - 900, exp=now - 300),
        "not yet valid": issuer.token(nbf=now + 900),
        "forged signature": issuer.sign(issuer.claims(), key=new_rsa()),
        "untrusted issuer": issuer.token(iss="https://attacker.example/realms/mcp"),
        "hs256": issuer.sign(issuer.claims(), alg="HS256", key=b"x" * 32),  # type: ignore[arg-type]
        "opaque": "2YotnFZFEjr1zCsicMWpAA",
        "garbage jwt": "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln",
        "empty": "",
    }


async def test_each_bad_token_refused_before_any_sts_call(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    exchanger, metrics = _exchanger(issuer, session)
    reasons = {}
    for kind, token in _bad_tokens(issuer).items():
        with pytest.raises(InvalidToken) as info:
            await exchanger.exchange(token, BACKEND)
        reasons[kind] = info.value.reason
        if token:
            assert token not in info.value.reason
    assert metrics.sts_call_count() == 0
    assert reasons["expired"] == "token expired"
    assert reasons["forged signature"] == "signature verification failed"
    assert "not trusted" in reasons["untrusted issuer"]
    assert "HS256" in reasons["hs256"]
    assert "not a JWT" in reasons["opaque"]


async def test_audience_already_right_needs_no_exchange(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    exchanger, metrics = _exchanger(issuer, session)
    token = issuer.token(aud=[BACKEND])
    result = await exchanger.exchange(token, BACKEND)
    assert result.outcome == "unchanged"
    assert result.token == token
    assert await exchanger.token_for(token, "no-exchange") == token
    assert metrics.sts_call_count() == 0


async def test_a_broad_token_listing_the_target_is_exchanged_by_default(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    """Issue 14: with ``aud_contains`` (the old default) a user's token whose ``aud`` lists the
    server among others went to it unchanged, every other audience included. The default is
    ``aud_exact`` now: such a token is exchanged (here: the STS is a closed port, so the attempt
    shows as one failed STS call instead of the token passing through)."""
    exchanger, metrics = _exchanger(issuer, session)
    token = issuer.token(aud=["mcp-gateway", BACKEND, "cluster-a"])
    with pytest.raises(STSUnavailable):
        await exchanger.exchange(token, BACKEND)
    assert metrics.sts_call_count() == 1


async def test_a_target_refuses_subjects_not_addressed_to_its_callers(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    """``subject_audiences``: a token exchanged for the backend (aud = the backend) cannot be
    exchanged again for a target meant for the gateway's users; no STS call is made."""
    exchanger, metrics = _exchanger(issuer, session)
    with pytest.raises(InvalidToken, match=r"'aud' must contain one of \['mcp-gateway'\]"):
        await exchanger.exchange(issuer.token(aud=[BACKEND]), "gateway-only")
    assert metrics.sts_call_count() == 0


async def test_unknown_target_refused(issuer: LocalIssuer, session: aiohttp.ClientSession) -> None:
    exchanger, _ = _exchanger(issuer, session)
    with pytest.raises(UnknownTarget, match="'elsewhere'"):
        await exchanger.exchange(issuer.token(), "elsewhere")


async def test_opaque_passthrough_only_where_no_exchange_runs(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    exchanger, metrics = _exchanger(issuer, session, opaque_tokens="passthrough")
    assert await exchanger.token_for("2YotnFZFEjr1zCsicMWpAA", "no-exchange") == (
        "2YotnFZFEjr1zCsicMWpAA"
    )
    with pytest.raises(InvalidToken, match="opaque"):
        await exchanger.exchange("2YotnFZFEjr1zCsicMWpAA", BACKEND)
    assert metrics.sts_call_count() == 0


async def test_sts_down_is_unavailable_then_breaker_fails_fast(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    exchanger, metrics = _exchanger(issuer, session)
    for user in ("u1", "u2"):
        with pytest.raises(STSUnavailable, match="unreachable") as info:
            await exchanger.exchange(issuer.token(user), BACKEND)
        assert "eyJ" not in str(info.value)
    assert metrics.sts_call_count() == 2
    with pytest.raises(STSUnavailable, match="failed 2 times in a row"):
        await exchanger.exchange(issuer.token("u3"), BACKEND)
    assert metrics.sts_call_count() == 2  # the open breaker did not call
