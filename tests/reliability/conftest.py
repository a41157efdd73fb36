"""Fixtures of the reliability suite: the real token exchange and policy services (in-process,
free ports) trusting Keycloak realm ``mcp`` *and* a local real issuer whose keys the tests hold,
plus an untrusted issuer, an HTTP session and the real MCP backend; ``sa_tokens``: a cluster-wide
"view" ServiceAccount token on each cluster."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from gateway_plugins.common.jwt_validation import IssuerConfig
from gateway_plugins.token_exchange.config import ValidationConfig
from tests.gateway_plugins.common.issuer import LocalIssuer
from tests.gateway_plugins.policy.running import RunningPolicy, policy_settings, running_policy
from tests.gateway_plugins.token_exchange.running import (
    CALLER_HEADERS,
    GATEWAY_AUDIENCE,
    RunningService,
    running_service,
    service_settings,
)
from tests.reliability.hostile import LOCAL_AUDIENCE
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_MCP


@pytest.fixture(scope="module")
async def local_issuer() -> AsyncIterator[LocalIssuer]:
    issuer = await LocalIssuer(realm="reliability").start()
    yield issuer
    await issuer.close()


@pytest.fixture(scope="module")
async def untrusted_issuer() -> AsyncIterator[LocalIssuer]:
    issuer = await LocalIssuer(realm="untrusted").start()
    yield issuer
    await issuer.close()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), headers=CALLER_HEADERS
    ) as session:
        yield session


def _issuers(keycloak: kc.Keycloak, local: LocalIssuer) -> list[IssuerConfig]:
    return [
        IssuerConfig(
            issuer=keycloak.issuer(REALM_MCP), audiences=[GATEWAY_AUDIENCE, BACKEND_AUDIENCE]
        ),
        IssuerConfig(issuer=local.issuer, audiences=[LOCAL_AUDIENCE]),
    ]


@pytest.fixture(scope="module")
async def token_service(
    keycloak: kc.Keycloak, local_issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    """The token exchange service; JWKS refetch for unknown kids at most every 30 s."""
    settings = service_settings(
        keycloak,
        tmp_path_factory.mktemp("rel-te"),
        validation=ValidationConfig(
            issuers=_issuers(keycloak, local_issuer), jwks_min_refetch_interval_s=30.0
        ),
    )
    # the local issuer's tokens are addressed to the gateway too (LOCAL_AUDIENCE)
    ext_authz = settings.ext_authz.model_copy(
        update={"audiences": [*settings.ext_authz.audiences, LOCAL_AUDIENCE]}
    )
    settings = settings.model_copy(update={"ext_authz": ext_authz})
    async with running_service(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def policy_service(
    keycloak: kc.Keycloak, local_issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningPolicy]:
    """The policy service (embedded engine, the repo's policies)."""
    settings = policy_settings(keycloak, tmp_path_factory.mktemp("rel-policy"))
    settings = settings.model_copy(
        update={
            "auth": settings.auth.model_copy(update={"issuers": _issuers(keycloak, local_issuer)})
        }
    )
    async with running_policy(settings) as running:
        yield running


@pytest.fixture(scope="module")
def realm_public_key(keycloak: kc.Keycloak) -> Any:
    """Realm ``mcp``'s RS256 signing key (public half), from its JWKS."""
    with urllib.request.urlopen(  # noqa: S310 - testbed URL
        keycloak.jwks_url(REALM_MCP), timeout=30, context=keycloak.ssl_context()
    ) as resp:
        keys = json.loads(resp.read())["keys"]
    rsa_key = next(k for k in keys if k.get("alg") == "RS256" and k.get("use", "sig") == "sig")
    return jwt.PyJWK(rsa_key).key, rsa_key["kid"]


async def metrics_text(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def work_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module")
async def sa_tokens(
    cluster_a: Cluster, cluster_b: Cluster, service_account_token: Any
) -> dict[str, str]:
    """A cluster-wide "view" ServiceAccount token on each cluster, by context name."""
    return {
        "cluster-a": await service_account_token(
            cluster_a, name="rel-fault-view", cluster_role="view", cluster_wide=True
        ),
        "cluster-b": await service_account_token(
            cluster_b, name="rel-fault-view", cluster_role="view", cluster_wide=True
        ),
    }
