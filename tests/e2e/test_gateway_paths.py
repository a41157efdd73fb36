"""Path handling of the local gateway (found in review): only the two RFC 9728 metadata paths are
public, matched exactly after Envoy normalized the path; a path that climbs out of them with
``..`` (plain or ``%2e%2e``) is ``/mcp`` with every auth step, and an escaped slash is refused.

The requests are written to a raw socket: HTTP clients normalize ``..`` themselves, which would
hide what the gateway does with the path it receives.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.mcp_gateway.envoy_config import METADATA_PATHS
from tests.testbed.mcp_gateway.stack import LocalGateway

LIST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
)
TRAVERSALS = (
    "/.well-known/oauth-protected-resource/../../mcp",
    "/.well-known/oauth-protected-resource/%2e%2e/%2e%2e/mcp",
    "/.well-known/oauth-protected-resource/%2E%2E/%2E%2E/mcp",
    "/.well-known/oauth-protected-resource/mcp/../../../mcp",
    "/.well-known/oauth-protected-resource/./../.././mcp",
)


async def raw_request(
    base_url: str, method: str, path: str, body: str = "", token: str | None = None
) -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request with ``path`` sent byte for byte; status, headers, body."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: application/json, text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(body.encode())}",
        "Connection: close",
    ]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body.encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=60)
    writer.close()
    header_block, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return status, headers, payload.decode("utf-8", "replace")


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_climbing_out_of_the_metadata_path_gets_every_auth_step(
    local_gateway: LocalGateway, path: str
) -> None:
    """The review's request: it used to skip every auth step and reach the MCP server through
    the broker. Normalized to /mcp, it now meets the token check like any MCP request."""
    base = local_gateway.envoy.url
    for body in (LIST, INIT):
        status, headers, text = await raw_request(base, "POST", path, body)
        assert status == 401, (path, status, text)
        assert headers.get("www-authenticate", "").startswith("Bearer"), (path, headers)
        assert json.loads(text)["allow"] is False
        assert "tools" not in text
        assert "protocolVersion" not in text


async def test_climbing_out_with_a_token_is_the_ordinary_mcp_endpoint(
    local_gateway: LocalGateway, tokens: dict[str, str]
) -> None:
    """With a valid token the same request is the authenticated /mcp: the broker's initialize
    answer, exactly what POST /mcp gives (not a public, unauthenticated detour)."""
    base = local_gateway.envoy.url
    status, headers, text = await raw_request(base, "POST", TRAVERSALS[1], INIT, tokens["viewer"])
    assert status == 200, text
    assert headers.get("mcp-session-id")


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/oauth-protected-resource%2F..%2F..%2Fmcp",
        "/.well-known/oauth-protected-resource%2f..%2f..%2fmcp",
        "/mcp%2F",
        "/.well-known/oauth-protected-resource%5Cmcp",
    ],
)
async def test_escaped_slashes_are_refused(local_gateway: LocalGateway, path: str) -> None:
    status, _, text = await raw_request(local_gateway.envoy.url, "POST", path, LIST)
    assert status == 400, (path, status, text)
    assert "escaped slashes" in json.loads(text)["reason"]


async def test_only_the_exact_metadata_paths_are_public(local_gateway: LocalGateway) -> None:
    base = local_gateway.envoy.url
    issuer = local_gateway.keycloak.issuer(REALM_MCP)
    for path in METADATA_PATHS:
        status, _, text = await raw_request(base, "GET", path)
        assert status == 200, (path, status, text)
        assert json.loads(text)["authorization_servers"] == [issuer]
    # Anything else under /.well-known, or next to the endpoint, is not served at all.
    for path in (
        "/.well-known/oauth-protected-resource/other",
        "/.well-known/oauth-protected-resource/mcp/x",
        "/.well-known/openid-configuration",
        "/status",
        "/mcp/stateless",
    ):
        status, _, text = await raw_request(base, "POST", path, LIST)
        assert status == 404, (path, status, text)
        assert "tools" not in text
