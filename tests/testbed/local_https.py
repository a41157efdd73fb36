"""Synchronous HTTPS calls to local test components (code outside an event loop, readiness checks):
the testbed CA verifies the server, an optional client certificate authenticates the caller."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.testbed.pki import CertPair


def https_request(
    method: str,
    url: str,
    ca_file: Path,
    client_cert: CertPair | None = None,
    *,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
    accept: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """A synchronous HTTPS request to a local test component, JSON ``body`` if any:
    (status, text), or (0, the error) when it cannot be reached."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - https URL of a local test component
        url, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def https_status(url: str, ca_file: Path, client_cert: CertPair | None = None) -> int:
    """The HTTP status of a GET (2 s timeout); raises ``OSError`` when nothing answers."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    req = urllib.request.Request(url)  # noqa: S310 - https URL of a local test component
    try:
        with urllib.request.urlopen(req, timeout=2.0, context=ctx) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
