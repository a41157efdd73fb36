"""RFC 8693 client: trade the caller's token for one a foreign-domain cluster trusts.

Deliberately small and cache-free: the token-exchange service caches. The caller's token is the
``subject_token``; ``audience`` is the cluster's configured audience. Redirects are never followed
(a 307/308 would re-send the token and the client secret to another address): a 3xx is an error.
"""

from __future__ import annotations

import json
import ssl

import aiohttp

from kmg_common.tracing import Tracing
from mcp_backend.cluster_config import TokenExchangeConfig
from mcp_backend.errors import Unauthorized, Unreachable

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


def exchange_form(subject_token: str, audience: str) -> dict[str, str]:
    """The form fields of one RFC 8693 request."""
    return {
        "grant_type": GRANT_TYPE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": audience,
    }


class TokenExchanger:
    """POSTs the exchange form to the configured URL; one pooled session per exchange URL."""

    def __init__(self, tracing: Tracing | None = None) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._tracing = tracing

    def _client(self, cfg: TokenExchangeConfig) -> aiohttp.ClientSession:
        session = self._sessions.get(cfg.url)
        if session is None or session.closed:
            ssl_ctx: ssl.SSLContext | bool = True
            if cfg.ca_file is not None:
                ssl_ctx = ssl.create_default_context(cafile=str(cfg.ca_file))
            traces = [self._tracing.client_trace_config("token-exchange")] if self._tracing else []
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_ctx), trace_configs=traces
            )
            self._sessions[cfg.url] = session
        return session

    async def exchange(self, cfg: TokenExchangeConfig, subject_token: str, cluster: str) -> str:
        """The exchanged access token; raises Unauthorized (refused) or Unreachable."""
        secret = cfg.client_secret()
        auth = aiohttp.BasicAuth(cfg.client_id, secret or "") if cfg.client_id else None
        try:
            async with self._client(cfg).post(
                cfg.url,
                data=exchange_form(subject_token, cfg.audience),
                auth=auth,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                # A 307/308 would re-send the subject token and client secret elsewhere.
                allow_redirects=False,
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unreachable(
                f"token exchange for cluster {cluster!r} at {cfg.url} failed "
                f"({type(exc).__name__}): the exchange service is down or slow; retry later"
            ) from None
        if 300 <= status < 400:
            raise Unreachable(
                f"token exchange for cluster {cluster!r} at {cfg.url} answered a redirect "
                f"(HTTP {status}); redirects are not followed, so the token is never sent to "
                "another address: set token_exchange.url to the final token endpoint"
            )
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status >= 500 or (status == 200 and not body.get("access_token")):
            raise Unreachable(
                f"token exchange for cluster {cluster!r} at {cfg.url} failed (HTTP {status}); "
                "the exchange service or its identity provider has a problem; retry later"
            )
        if status != 200:
            err = body.get("error_description") or body.get("error")
            raise Unauthorized(
                f"token exchange for cluster {cluster!r} (audience {cfg.audience!r}) was refused "
                f"(HTTP {status}{': ' + str(err) if err else ''}); your identity is not allowed on "
                "that cluster's domain",
                status=401,
            )
        return str(body["access_token"])

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
