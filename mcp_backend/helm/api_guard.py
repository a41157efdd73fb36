"""The API server as helm sees it: a loopback proxy that refuses denied kinds on the wire.

The helm tools check what a chart creates before helm runs (``chart_contents``, the dry run,
``post_render``), but helm renders the chart again for the install and helm 3 does not pass
hooks to a post-renderer: a hook built with ``rand``/``now`` could still create a denied kind.
So every helm command talks to the cluster through an :class:`ApiGuard` started for that command
alone: an HTTP server on 127.0.0.1 that forwards each request (the caller's own token included,
unchanged) to the cluster through the cluster's own client session, whose access-control
middleware (:mod:`mcp_backend.access.client_middleware`) admits it as it admits every other
tool's calls. A request on a denied kind, or one creating a service-account-token Secret while
ServiceAccount is denied, gets the API server's kind of 403 ``Status`` and never leaves the
backend, whichever part of helm sent it (templates, hooks, ``crds/``, lookups, ``--wait``).

The guard speaks TLS (client-go sends no bearer token over plain HTTP) with a self-signed
certificate for 127.0.0.1 made once per process (:func:`loopback_certificate`); helm gets it as
``HELM_KUBECAFILE``.

Responses are passed through as they come (no Secret redaction: helm keeps its release records
in Secrets and must read them back). A path whose encoding the check could read differently from
the API server (``%``, ``.``/``..`` segments) is refused.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import socket
import ssl
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kmg_common.logging import request_id_var
from mcp_backend.audit import AUDIT_ID_HEADER, audit_id
from mcp_backend.errors import AccessDenied

DENIED_MARKER = "refused by the MCP backend"  # in every refusal, for the helm runner to spot
# Hop-by-hop and framing headers: aiohttp sets its own on both legs.
_SKIP_REQUEST = frozenset(
    {"host", "connection", "content-length", "transfer-encoding", "accept-encoding", "keep-alive"}
)
_SKIP_RESPONSE = frozenset(
    {"connection", "content-length", "transfer-encoding", "content-encoding", "keep-alive"}
)


@functools.cache
def loopback_certificate() -> tuple[Path, ssl.SSLContext]:
    """(PEM file of the certificate, server context) for https://127.0.0.1, made once: a fresh
    P-256 key that never leaves this process's private temp directory."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-backend helm guard")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = Path(tempfile.mkdtemp(prefix="mcp-helm-guard-"))  # mode 0700
    cert_file, key_file = directory / "guard.crt", directory / "guard.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    key_file.unlink()  # loaded: not needed on disk any more
    return cert_file, context


class ApiGuard:
    """``async with ApiGuard(session) as guard``: ``guard.url`` serves the cluster's API.

    ``session`` is the cluster's client session (:meth:`KubeClient.session
    <mcp_backend.kube.client.KubeClient.session>`), whose middleware enforces the access policy
    on every request forwarded through it."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.refused: list[str] = []
        self._request_id = request_id_var.get()  # helm's requests are made for this tool call
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.url = ""
        self.ca_file, self._tls = loopback_certificate()

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock, ssl_context=self._tls).start()
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if "%" in path or any(part in (".", "..") for part in path.split("/")):
            return self._refuse(400, "BadRequest", f"path {path!r} is not a plain API path")
        body = await request.read() if request.can_read_body else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        headers[AUDIT_ID_HEADER] = audit_id(self._request_id)
        try:
            return await self._relay(request, headers, body)
        except AccessDenied as exc:  # refused by the session's access control, nothing sent
            self.refused.append(exc.message)
            return self._refuse(403, "Forbidden", exc.message)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._refuse(502, "ServiceUnavailable", f"the cluster did not answer: {exc}")

    async def _relay(
        self, request: web.Request, headers: dict[str, str], body: bytes | None
    ) -> web.StreamResponse:
        async with self.session.request(
            request.method,
            request.raw_path.lstrip("/"),
            headers=headers,
            data=body,
            # helm keeps its own time (watches of --wait last long); connecting is bounded as usual
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.session.timeout.sock_connect
            ),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _SKIP_RESPONSE:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    @staticmethod
    def _refuse(code: int, reason: str, message: str) -> web.Response:
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"{DENIED_MARKER}: {message}",
            "reason": reason,
            "code": code,
        }
        return web.Response(status=code, text=json.dumps(status), content_type="application/json")
