"""The token exchange service's core: what its handlers use, built from the settings.

:class:`Runtime` holds the settings, the secrets read at start, and what the running loop fills in
(the exchanger over one client session, the STS clients, the policy client, the shared cache).
The HTTP routes are :mod:`.routes` (the ext_authz checks share the one check pipeline of
:mod:`.pipeline`); :mod:`.app` assembles them.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthenticator
from gateway_plugins.common.jwks import JWKSCache
from gateway_plugins.common.jwt_validation import JWTValidator
from gateway_plugins.token_exchange.config import Settings
from gateway_plugins.token_exchange.exchanger import Exchanger
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.policy_client import PolicyClient
from gateway_plugins.token_exchange.redis_cache import (
    SharedCacheMaterial,
    SharedTokenCache,
    open_shared_cache,
)
from gateway_plugins.token_exchange.sts_client import STSClient
from gateway_plugins.token_exchange.sts_config import ClientAuth
from gateway_plugins.token_exchange.targets import TargetRegistry
from kmg_common.settings import SettingsError, read_secret

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the handlers use; filled in at startup (the HTTP session needs the running loop)."""

    settings: Settings
    metrics: ExchangeMetrics
    sts_secrets: dict[str, str | None]
    sts_keys: dict[str, Any]
    facade_clients: dict[str, str]
    policy_caller_headers: dict[str, str] = field(default_factory=dict)
    exchanger: Exchanger | None = None
    jwks: JWKSCache | None = None
    sts: dict[str, STSClient] = field(default_factory=dict)
    policy: PolicyClient | None = None  # set when ext_authz.policy_url is configured
    shared_cache: SharedTokenCache | None = None  # set when cache.backend is redis

    def require(self) -> Exchanger:
        if self.exchanger is None:
            raise web.HTTPServiceUnavailable(reason="Starting")
        return self.exchanger

    def client_ok(self, client_id: str, secret: str) -> bool:
        """The ``/token`` facade's client check (constant time, unknown ids included)."""
        expected = self.facade_clients.get(client_id)
        if expected is None:
            hmac.compare_digest(secret.encode(), secret.encode())  # similar timing for unknown ids
            return False
        return hmac.compare_digest(expected.encode(), secret.encode())


RUNTIME = web.AppKey("token_exchange_runtime", Runtime)


def _load_private_key(path: Any, what: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SettingsError(f"{what}: cannot load PEM private key {path}: {exc}") from None


def load_credentials(
    settings: Settings,
) -> tuple[dict[str, str | None], dict[str, Any], dict[str, str]]:
    """Read every secret up front so a missing one fails at start with a clear message."""
    secrets: dict[str, str | None] = {}
    keys: dict[str, Any] = {}
    for name, sts in settings.sts.items():
        if sts.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            assert sts.private_key_file is not None
            keys[name] = _load_private_key(sts.private_key_file, f"sts.{name}.private_key_file")
            secrets[name] = None
        else:
            secrets[name] = read_secret(
                f"sts.{name}.client_secret", file=sts.client_secret_file, env=sts.client_secret_env
            )
    facade = {
        c.client_id: read_secret(
            f"facade client '{c.client_id}' client_secret",
            file=c.client_secret_file,
            env=c.client_secret_env,
        )
        for c in settings.facade.clients
    }
    return secrets, keys, facade


def policy_caller_headers(settings: Settings, caller: CallerAuthenticator) -> dict[str, str]:
    """The credential the combined check presents to the policy service's check: the secret of
    ``ext_authz.policy_caller_secret_*``, else this service's own caller secret (one shared
    secret for both plugins), else none."""
    ext = settings.ext_authz
    secret = caller.secret
    if ext.policy_caller_secret_file is not None or ext.policy_caller_secret_env is not None:
        secret = read_secret(
            "ext_authz.policy_caller_secret",
            file=ext.policy_caller_secret_file,
            env=ext.policy_caller_secret_env,
        )
    return {ext.policy_caller_header: secret} if secret else {}


def build_exchanger(runtime: Runtime, session: Any) -> Exchanger:
    """Wire validator, STS clients, targets and cache over one shared client session."""
    settings = runtime.settings
    validation = settings.validation
    jwks = JWKSCache(session, min_refetch_interval_s=validation.jwks_min_refetch_interval_s)
    validator = JWTValidator(
        validation.issuers,
        jwks,
        algorithms=validation.algorithms,
        leeway_s=validation.leeway_s,
        max_token_bytes=validation.max_token_bytes,
        verified_cache_size=validation.verified_cache_size,
        verified_cache_ttl_s=validation.verified_cache_ttl_s,
    )
    runtime.jwks = jwks
    runtime.sts = {
        name: STSClient(
            name,
            cfg,
            session,
            client_secret=runtime.sts_secrets.get(name),
            private_key=runtime.sts_keys.get(name),
            breaker=settings.breaker,
            metrics=runtime.metrics,
        )
        for name, cfg in settings.sts.items()
    }
    return Exchanger(
        validator=validator,
        targets=TargetRegistry(settings.targets),
        sts=runtime.sts,
        cache=settings.cache,
        opaque_tokens=validation.opaque_tokens,
        metrics=runtime.metrics,
        shared=runtime.shared_cache,
    )


def build_policy_client(runtime: Runtime, session: Any) -> PolicyClient | None:
    """The combined check's client of the policy service (``ext_authz.policy_url``), if any."""
    ext_authz = runtime.settings.ext_authz
    if ext_authz.policy_url is None:
        return None
    return PolicyClient(
        ext_authz.policy_url,
        session,
        timeout_s=ext_authz.policy_timeout_s,
        upstream_headers=ext_authz.policy_upstream_headers,
        metrics=runtime.metrics,
        caller_headers=runtime.policy_caller_headers,
    )


async def open_shared(
    settings: Settings, material: SharedCacheMaterial, metrics: ExchangeMetrics
) -> SharedTokenCache:
    """The Redis pool; an unreachable Redis is logged, not fatal (the memory cache serves)."""
    cache = open_shared_cache(settings.cache.redis, material, metrics=metrics)
    if await cache.ping():
        log.info("shared token cache: Redis at %s", settings.cache.redis.url)
    if material.password is None:
        log.warning(
            "shared token cache: no cache.redis.password_file/_env; Redis at %s is used "
            "without authentication",
            settings.cache.redis.url,
        )
    return cache
