"""Issue 14 item 1, ``caller_auth`` mode ``mtls``: the checks of both plugins answer only a caller
whose client certificate the gateway's CA signed (and, with ``allowed_client_names``, that names
an allowed client: its CN, a DNS SAN or a URI SAN such as an Istio workload's SPIFFE id).

The real services serve HTTPS with a certificate of a throwaway CA; the callers are real TLS
clients with certificates of that CA, of another CA, or none; the tokens are real Keycloak
tokens. The shared-secret mode is tested with each service (policy: ``test_caller_auth.py``;
token exchange: ``test_keycloak_integration.py``, ``test_combined.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.service import serve
from gateway_plugins.policy.app import create_app as create_policy_app
from gateway_plugins.token_exchange.app import create_app as create_token_exchange_app
from gateway_plugins.token_exchange.service import RUNTIME
from tests.gateway_plugins.policy.running import SERVER, policy_settings
from tests.gateway_plugins.token_exchange.running import service_settings
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.pki import CertificateAuthority, CertPair
from tests.testbed.ports import free_port

pytestmark = pytest.mark.timeout(300)

GATEWAY_CN = "gateway-envoy"
GATEWAY_SPIFFE = "spiffe://cluster.local/ns/istio-system/sa/mcp-gateway-istio"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: CertPair
    clients: dict[str, CertPair]  # who -> certificate

    def caller_auth(self) -> CallerAuthConfig:
        return CallerAuthConfig(
            mode="mtls",
            tls_cert_file=self.server.cert,
            tls_key_file=self.server.key,
            client_ca_file=self.ca,
            allowed_client_names=[GATEWAY_CN, GATEWAY_SPIFFE],
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("caller-mtls")
    ca = CertificateAuthority(base / "ca", name="gateway-callers-ca")
    foreign = CertificateAuthority(base / "foreign", name="someone-elses-ca")
    clients = {
        "the gateway (CN)": ca.issue(GATEWAY_CN, client=True, server=False),
        "the gateway (SPIFFE id)": ca.issue(
            "istio-workload", client=True, server=False, uris=(GATEWAY_SPIFFE,)
        ),
        "another client of the CA": ca.issue("some-pod", client=True, server=False),
        "another workload's SPIFFE id": ca.issue(
            "other-workload",
            client=True,
            server=False,
            uris=("spiffe://cluster.local/ns/default/sa/default",),
        ),
        "the gateway's name from another CA": foreign.issue(GATEWAY_CN, client=True, server=False),
    }
    return Pki(ca.cert, ca.issue("plugin", hosts=("127.0.0.1",)), clients)


def _client_context(pki: Pki, who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if who is not None:
        pair = pki.clients[who]
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


@contextlib.asynccontextmanager
async def serving(app: web.Application, pki: Pki) -> AsyncIterator[str]:
    """``app`` served on a free port (HTTPS: the app asks for it); its base URL once healthy."""
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop, shutdown_timeout=2))
    url = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                if task.done():
                    task.result()
                with contextlib.suppress(aiohttp.ClientError):
                    # the probe needs no client certificate (kubelet has none)
                    async with http.get(f"{url}/healthz", ssl=_client_context(pki, None)) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError("the service did not start within 8s")
        yield url
    finally:
        stop.set()
        await task


async def _post(
    pki: Pki, who: str | None, url: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, headers=headers, data=body, ssl=_client_context(pki, who)) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


def _decisions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _refused(status: int, answer: dict[str, Any], says: str) -> None:
    assert status == 403, answer
    assert (answer["allow"], answer["error"]) == (False, "caller_unauthenticated")
    assert says in answer["reason"]


async def _handshake_refused(pki: Pki, who: str, url: str, headers: dict[str, str]) -> None:
    """A certificate of another CA never gets as far as an HTTP answer."""
    with pytest.raises(aiohttp.ClientError):
        await _post(pki, who, url, headers)


async def _plaintext_refused(url: str) -> None:
    """The port speaks TLS only: a cleartext request gets no answer."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(url.replace("https://", "http://")) as resp:
                await resp.read()


async def test_policy_checks_answer_only_the_gateways_certificate(
    keycloak: Any, tmp_path: Path, pki: Pki
) -> None:
    settings = policy_settings(keycloak, tmp_path / "policy", caller_auth=pki.caller_auth())
    token = await keycloak.auser_token("viewer", "viewer")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"server": SERVER, "tool": "pods_list"}).encode()
    log = Path(str(settings.decision_log))
    async with serving(create_policy_app(settings), pki) as url:
        decide = f"{url}/v1/decide"
        status, answer, _ = await _post(pki, None, decide, headers, body)
        _refused(status, answer, "the caller presented none")
        for who in ("another client of the CA", "another workload's SPIFFE id"):
            status, answer, _ = await _post(pki, who, decide, headers, body)
            _refused(status, answer, "names no allowed client")
        await _handshake_refused(pki, "the gateway's name from another CA", decide, headers)
        await _plaintext_refused(decide)
        assert _decisions(log) == 0, "nothing may be decided for a refused caller"
        for who in ("the gateway (CN)", "the gateway (SPIFFE id)"):
            status, answer, _ = await _post(pki, who, decide, headers, body)
            assert (status, answer["allow"]) == (200, True), (who, answer)
        check = {**headers, "x-mcp-method": "tools/list", "x-mcp-servername": "mcpBroker"}
        status, answer, _ = await _post(pki, None, f"{url}/check/mcp", check)
        _refused(status, answer, "the caller presented none")
        status, answer, resp_headers = await _post(pki, "the gateway (CN)", f"{url}/check", check)
        assert (status, answer["allow"]) == (200, True), answer
        assert "x-authorized-tools" in {h.lower() for h in resp_headers}
    assert _decisions(log) == 3


async def test_token_exchange_checks_answer_only_the_gateways_certificate(
    keycloak: Any, tmp_path: Path, pki: Pki
) -> None:
    settings = service_settings(keycloak, tmp_path / "secrets", caller_auth=pki.caller_auth())
    token = await keycloak.auser_token("viewer", "viewer")
    headers = {
        "authorization": f"Bearer {token}",
        "x-mcp-servername": BACKEND_AUDIENCE,
        "x-mcp-method": "tools/call",
    }
    app = create_token_exchange_app(settings)
    async with serving(app, pki) as url:
        metrics = app[RUNTIME].metrics
        for path in ("/check/mcp", "/ext-authz/combined/mcp"):
            status, answer, resp_headers = await _post(pki, None, url + path, headers)
            _refused(status, answer, "the caller presented none")
            assert "authorization" not in {h.lower() for h in resp_headers}
            status, answer, resp_headers = await _post(
                pki, "another client of the CA", url + path, headers
            )
            _refused(status, answer, "names no allowed client")
            assert "authorization" not in {h.lower() for h in resp_headers}
            await _handshake_refused(pki, "the gateway's name from another CA", url + path, headers)
        await _plaintext_refused(f"{url}/check/mcp")
        assert metrics.sts_call_count(None) == 0, "no token may be exchanged for a refused caller"
        status, answer, resp_headers = await _post(
            pki, "the gateway (SPIFFE id)", f"{url}/check/mcp", headers
        )
        assert (status, answer["allow"]) == (200, True), answer
        issued = resp_headers["Authorization"].removeprefix("Bearer ")
        assert issued != token  # exchanged for the backend
        assert metrics.sts_call_count(None) == 1
