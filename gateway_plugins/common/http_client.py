"""The one shared aiohttp client session per upstream, with an optional private CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp


def make_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify against the system trust store, plus ``ca_file`` when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def make_client_session(
    *,
    ca_file: Path | None = None,
    timeout_s: float = 5.0,
    connect_timeout_s: float | None = None,
    limit: int = 100,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
) -> aiohttp.ClientSession:
    """A pooled session; call from inside a running event loop and close it on shutdown."""
    connector = aiohttp.TCPConnector(
        ssl=make_ssl_context(ca_file), limit=limit, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(
        total=timeout_s, sock_connect=connect_timeout_s or min(timeout_s, 3.0)
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=False, trace_configs=trace_configs
    )
