"""The policy service refuses forged and expired tokens (real Keycloak tokens, a forged signature,
an unknown key, ``alg: none``, a token that expired)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.gateway_plugins.policy.checks import (
    call_body,
    check_headers,
    post_check,
)
from tests.gateway_plugins.policy.running import (
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP

pytestmark = pytest.mark.timeout(600)


# --- tokens


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_are_refused(
    http: aiohttp.ClientSession, service: RunningPolicy, viewer_token: str
) -> None:
    header, _, signature = viewer_token.split(".")
    claims = kc.decode_jwt(viewer_token)
    claims["resource_access"][SERVER]["roles"].append("pods_delete")  # grant itself a tool
    tampered = f"{header}.{_b64(claims)}.{signature}"
    kid = jwt.get_unverified_header(viewer_token)["kid"]
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    resigned = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid})
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    for token, reason in (
        (tampered, "signature verification failed"),
        (resigned, "signature verification failed"),
        (unsigned, "alg 'none'"),
        ("not-a-jwt", "not a JWT"),
    ):
        status, payload, headers = await post_check(
            http,
            service,
            check_headers(token, "tools/call", "pods_delete"),
            call_body("pods_delete", {}),
        )
        assert (status, payload["allow"]) == (401, False), reason
        assert reason in payload["reason"]
        assert token not in json.dumps(payload)
        assert "Bearer" in headers["WWW-Authenticate"]


def _admin(keycloak: Any, method: str, path: str, body: Any = None) -> Any:
    """``method /admin/realms/mcp/<path>`` as the testbed's Keycloak admin."""
    return keycloak.admin_request(method, f"realms/{REALM_MCP}/{path}", body)


@pytest.fixture
def short_lived_client(keycloak: Any) -> Iterator[str]:
    """A public client whose access tokens live 5 seconds (client attribute override)."""
    client_id = f"policy-short-{uuid.uuid4().hex[:8]}"
    _admin(
        keycloak,
        "POST",
        "clients",
        {
            "clientId": client_id,
            "publicClient": True,
            "directAccessGrantsEnabled": True,
            "standardFlowEnabled": False,
            "attributes": {"access.token.lifespan": "5"},
        },
    )
    uuid_ = _admin(keycloak, "GET", f"clients?clientId={client_id}")[0]["id"]
    try:
        yield client_id
    finally:
        _admin(keycloak, "DELETE", f"clients/{uuid_}")


async def test_expired_token_is_refused(
    http: aiohttp.ClientSession, keycloak: Any, policy_work: Path, short_lived_client: str
) -> None:
    settings = policy_settings(keycloak, policy_work / "strict", leeway_s=0)
    async with running_policy(settings) as svc:
        token = await keycloak.auser_token("mcp", "mcp", client_id=short_lived_client)
        claims = kc.decode_jwt(token)
        assert claims["exp"] - claims["iat"] <= 5
        headers = check_headers(token, "tools/call", "pods_list")
        status, payload, _ = await post_check(http, svc, headers, call_body("pods_list", {}))
        assert (status, payload["allow"]) == (200, True)  # still valid
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.5)
        status, payload, _ = await post_check(http, svc, headers, call_body("pods_list", {}))
        assert (status, payload["allow"]) == (401, False)
        assert payload["reason"] == "token refused: token expired"
