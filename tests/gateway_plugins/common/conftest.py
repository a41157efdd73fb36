"""Fixtures for the shared plugin scaffolding: a real local issuer and one client session."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway_plugins.common.http_client import make_client_session
from tests.gateway_plugins.common.issuer import LocalIssuer, TLSIssuer
from tests.testbed.pki import CertificateAuthority


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer().start()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(timeout_s=2.0)
    yield client
    await client.close()


@pytest.fixture
async def tls_issuer(tmp_path: Path) -> AsyncIterator[TLSIssuer]:
    ca = CertificateAuthority(tmp_path / "pki")
    pair = ca.issue("issuer", hosts=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    server = await LocalIssuer(tls=context).start()
    client = make_client_session(ca_file=ca.cert, timeout_s=2.0)
    yield TLSIssuer(server, client)
    await client.close()
    await server.close()
