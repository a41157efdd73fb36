"""Issue 14: the backend refuses tokens that are not addressed to it (``accepted_audiences``,
``authorized_parties``, ``opaque_tokens``), and takes the MCP Gateway broker's discovery
credential for listing only.

Before, any pod could send the backend a user's own Keycloak token (``azp`` = the user's client,
``aud`` listing the server through Keycloak's audience resolution) and the tool ran with it,
around the gateway's policy, namespace rules and deny list. The backend here is configured as
``manifests/base`` configures it; the tokens are real ones of the testbed's Keycloak and cluster A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_backend.app import create_backend
from mcp_backend.config import Settings, SettingsError
from tests.mcp_backend.conftest import RunningBackend, Tokens, mcp_client, text_of
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE, SERVER_B_AUDIENCE

DISCOVERY = "broker-discovery-credential-test-only-0123456789"  # test-only credential
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "namespaces_list", "arguments": {}},
}


@pytest.fixture(scope="module")
def discovery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("discovery") / "token"
    path.write_text(f"Bearer {DISCOVERY}\n")  # as the controller's Secret holds it
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
async def bound(backend_factory: Any, discovery_file: Path) -> RunningBackend:
    """A backend bound as manifests/base binds it: tokens the gateway exchanged for it only."""
    running: RunningBackend = await backend_factory(
        accepted_audiences=[BACKEND_AUDIENCE],
        authorized_parties=[kc.GATEWAY_CLIENT_ID],
        opaque_tokens="reject",
        discovery_credential_file=str(discovery_file),
        accept_token_in_arguments=True,
    )
    return running


@pytest.fixture(scope="module")
async def user_token(keycloak: Any) -> str:
    token: str = await keycloak.auser_token("mcp", "mcp")
    return token


async def _post(url: str, token: str, body: dict[str, Any]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(
            url, json=body, headers={**HEADERS, "Authorization": f"Bearer {token}"}
        )


def _refused(resp: httpx2.Response) -> str:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    assert "resource_metadata=" in challenge
    description: str = resp.json()["error_description"]
    assert description in challenge.replace("\\", "")
    return description


async def test_a_users_own_token_sent_around_the_gateway_is_refused(
    bound: RunningBackend, user_token: str
) -> None:
    """The replay of issue 14: the user's own token lists this server in ``aud`` (Keycloak adds
    the clients whose roles it carries), but it was issued to the user's client, not exchanged
    by the gateway: refused before any tool runs."""
    claims = kc.decode_jwt(user_token)
    assert BACKEND_AUDIENCE in claims["aud"], "the case the audience alone would let through"
    assert claims["azp"] == kc.TEST_CLIENT_ID
    for body in (LIST, CALL):
        description = _refused(await _post(bound.url, user_token, body))
        assert "'azp'" in description
        assert repr(kc.GATEWAY_CLIENT_ID) in description
        assert "through the gateway" in description


async def test_tokens_of_other_audiences_and_clients_are_refused(
    bound: RunningBackend, keycloak: Any, user_token: str, tokens: Tokens
) -> None:
    exchanged_b = (await keycloak.aexchange(user_token, audience=SERVER_B_AUDIENCE))["access_token"]
    other_client = await keycloak.auser_token("mcp", "mcp", client_id="admin-cli")
    cases = {
        "a token the gateway exchanged for server B": (exchanged_b, "'aud'"),
        "a token of another client (admin-cli)": (other_client, "'aud'"),
        "a ServiceAccount token of cluster A": (tokens.admin, "'aud'"),
        "an opaque bearer": ("sha256~opaque-bearer-test-only", "opaque"),
        "a JWT-shaped bearer with an unreadable payload": (
            "eyJhbGciOiJSUzI1NiJ9.%%%.sig",
            "payload",
        ),
    }
    for name, (token, expected) in cases.items():
        description = _refused(await _post(bound.url, token, CALL))
        assert expected in description, (name, description)
    # a token of another party in the tool's arguments is refused the same way
    async with mcp_client(bound.url, None) as client:
        result = await client.call_tool("namespaces_list", {"access_token": user_token})
    assert result.is_error
    assert "token refused" in text_of(result)
    assert "'azp'" in text_of(result)


async def test_a_token_the_gateway_exchanged_for_this_server_reaches_the_cluster(
    bound: RunningBackend, keycloak: Any, user_token: str
) -> None:
    exchanged = (await keycloak.aexchange(user_token, audience=BACKEND_AUDIENCE))["access_token"]
    claims = kc.decode_jwt(exchanged)
    assert (claims["aud"], claims["azp"]) == (BACKEND_AUDIENCE, kc.GATEWAY_CLIENT_ID)
    async with mcp_client(bound.url, exchanged) as client:
        result = await client.call_tool("namespaces_list", {})
    text = text_of(result)
    # the API server authenticated the user (a table of namespaces, or its RBAC naming the user)
    assert "default" in text or "mcp" in text, text


async def test_the_discovery_credential_lists_but_never_calls(bound: RunningBackend) -> None:
    """The MCP Gateway broker discovers tools straight at the backend with its own bearer: the
    binding accepts exactly that value, for listing; a tools/call with it is refused and never
    reaches an API server."""
    async with mcp_client(bound.url, DISCOVERY) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "namespaces_list" in tools
        prompts = (await client.list_prompts()).prompts
        assert prompts
        result = await client.call_tool("namespaces_list", {})
    assert result.is_error
    assert "discovery credential lists tools, it cannot call them" in text_of(result)
    # only that exact value: a near miss is an ordinary (refused) opaque bearer
    _refused(await _post(bound.url, DISCOVERY + "x", LIST))


def test_a_short_or_unreadable_discovery_credential_refuses_to_start(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("Bearer abc\n")
    for path, expected in ((short, "shorter than 16"), (tmp_path / "missing", "cannot read")):
        settings = Settings.model_validate(
            {
                "clusters": [{"name": "nowhere", "server": "https://127.0.0.1:1"}],
                "discovery_credential_file": str(path),
            }
        )
        with pytest.raises(SettingsError, match=expected):
            create_backend(settings)
