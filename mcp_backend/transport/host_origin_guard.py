"""The Host and Origin checks in front of every route but the probes (DNS rebinding protection).

The rule (``kmg_common.host_origin``) comes from the settings: the loopback names, a
specific listen address, ``resource_url``'s host and ``allowed_hosts``; ``resource_url``'s origin,
the loopback origins when listening on loopback, and ``allowed_origins``. A refused request gets
a JSON answer before authentication, the MCP transport or any tool sees it. The SDK's transport
gets the same lists (``transport_security``), so both serving paths of ``/mcp`` (the single
exchange and the SDK's transport) sit behind one rule.
"""

from __future__ import annotations

import json
import logging

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from kmg_common.host_origin import PROBE_PATHS, HostOriginRule, service_rule
from mcp_backend.config import Settings
from mcp_backend.metrics import Metrics

log = logging.getLogger("mcp_backend.host_origin")


def host_origin_rule(settings: Settings) -> HostOriginRule:
    """The Host and Origin values the backend described by ``settings`` accepts."""
    return service_rule(settings, settings.resource_url)


def transport_security(rule: HostOriginRule) -> TransportSecuritySettings:
    """The same rule in the SDK's terms, for its Streamable HTTP transport."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(rule.hosts),
        allowed_origins=list(rule.origins),
    )


class HostOriginGuard:
    """ASGI middleware: a request with a foreign Host (421) or Origin (403) gets a JSON error."""

    def __init__(self, app: ASGIApp, *, rule: HostOriginRule, metrics: Metrics) -> None:
        self.app = app
        self.rule = rule
        self.refused = metrics.host_origin_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope["headers"]:  # the first of each, as the SDK reads them
            if name == b"host" and host is None:
                host = value.decode("latin-1")
            elif name == b"origin" and origin is None:
                origin = value.decode("latin-1")
        refusal = self.rule.refusal(host, origin)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self.refused.labels(refusal.error).inc()
        log.warning("refused %s %s: %s", scope["method"], scope["path"], refusal.message)
        body = json.dumps({"error": refusal.error, "message": refusal.message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
