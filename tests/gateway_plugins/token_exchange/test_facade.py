"""The RFC 8693 ``/token`` facade against the testbed's real Keycloak: exchanges and errors, and the
cross-domain token for cluster B (a realm ``mcp`` user seen by cluster B's API server).
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from tests.gateway_plugins.token_exchange.checks import (
    ACCESS,
    GRANT,
    fetch_user_token,
    post_token,
)
from tests.gateway_plugins.token_exchange.running import (
    CLUSTER_B_TARGET,
    FACADE_CLIENT_ID,
    FACADE_CLIENT_SECRET,
    REFUSED_TARGET,
    RunningService,
)
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_CLUSTER_B
from tests.testbed.keycloak import decode_jwt


async def test_facade_rfc8693_exchange_and_errors(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": BACKEND_AUDIENCE,
    }
    status, body = await post_token(http, service, form)
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "Bearer"
    assert 200 < body["expires_in"] <= 300
    assert decode_jwt(body["access_token"])["aud"] == BACKEND_AUDIENCE

    cases: list[tuple[dict[str, str], tuple[str, str], int, str]] = [
        (form, (FACADE_CLIENT_ID, "wrong"), 401, "invalid_client"),
        (
            dict(form, grant_type="client_credentials"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "unsupported_grant_type",
        ),
        (
            dict(form, subject_token="not-a-jwt"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_request",
        ),
        (
            dict(form, subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_request",
        ),
        (
            dict(form, audience="nowhere"),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_target",
        ),
        (
            dict(form, audience=REFUSED_TARGET),
            (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET),
            400,
            "invalid_target",
        ),
        (dict(form, scope="admin"), (FACADE_CLIENT_ID, FACADE_CLIENT_SECRET), 400, "invalid_scope"),
    ]
    for case_form, client, want_status, want_error in cases:
        status, body = await post_token(http, service, case_form, client=client)
        assert (status, body["error"]) == (want_status, want_error), body
        assert user_token not in json.dumps(body)

    # client_secret_post: credentials in the form instead of HTTP Basic.
    posted = dict(form, client_id=FACADE_CLIENT_ID, client_secret=FACADE_CLIENT_SECRET)
    async with http.post(f"{service.url}/token", data=posted) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
    async with http.post(f"{service.url}/token", data=form) as resp:  # no credentials at all
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="token-exchange"'
        assert (await resp.json())["error"] == "invalid_client"


async def test_cross_domain_token_for_cluster_b(
    keycloak: kc.Keycloak, service: RunningService, http: aiohttp.ClientSession
) -> None:
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": CLUSTER_B_TARGET,
    }
    before = service.sts_calls("cluster-b")
    status, body = await post_token(http, service, form)
    assert status == 200, body
    claims = decode_jwt(body["access_token"])
    assert claims["iss"] == keycloak.issuer(REALM_CLUSTER_B)
    assert claims["aud"] == "cluster-b"
    assert claims["preferred_username"] == "mcp"
    assert service.sts_calls("cluster-b") == before + 1
    status, again = await post_token(http, service, form)
    assert again["access_token"] == body["access_token"]  # cached: hop 2's jti is single-use
    assert service.sts_calls("cluster-b") == before + 1


async def test_cluster_b_api_server_sees_the_realm_mcp_user(
    keycloak: kc.Keycloak,
    service: RunningService,
    http: aiohttp.ClientSession,
    cluster_b: Cluster,
) -> None:
    """Cross-domain at the service level: cluster B trusts only realm cluster-b, yet the user of
    realm mcp reaches it, under the same username, with the token this service hands out."""
    user_token = await fetch_user_token(keycloak, "mcp", "mcp")
    with pytest.raises(ApiException) as refused:
        await cluster_b.whoami(user_token)  # realm mcp's own token: not trusted by cluster B
    assert refused.value.status == 401
    form = {
        "grant_type": GRANT,
        "subject_token": user_token,
        "subject_token_type": ACCESS,
        "audience": CLUSTER_B_TARGET,
    }
    status, body = await post_token(http, service, form)
    assert status == 200, body
    user = await cluster_b.wait_token_accepted(body["access_token"], within=30)
    assert user.username == "mcp"
    assert "mcp-users" in (user.groups or [])
