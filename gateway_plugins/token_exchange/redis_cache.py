"""The exchanged-token cache shared by every replica, in Redis (``cache.backend: redis``).

Sits behind each replica's own memory cache (:mod:`.token_cache`, which keeps coalescing
concurrent misses inside one process) and in front of the token service:

1. look the entry up in Redis: found and fresh → use it, no exchange;
2. else take a short lock (``SET NX PX``) named after the entry: the holder exchanges, stores the
   result with a TTL from the token's ``exp`` minus the margin, and releases the lock (only its
   own: compare-and-delete);
3. the other replicas poll for the entry while the lock lives, at most ``lock_wait_s``; the lock
   freed without an entry (the holder's exchange failed) → one of them takes it; the wait over →
   they exchange themselves (bounded wait, fall through).

Nothing readable lands in Redis. Entry names are HMAC-SHA256 of (subject token, audience, scope,
the target's hops) under a key derived from the encryption key: not the token, not a plain hash
of it (a plain hash would let anyone holding a token check whether it is in use, and would be
guessable for short opaque tokens). Values are AES-256-GCM encrypted with the entry's name as
associated data, so a value cannot be read, altered or moved to another entry without the key.
Several keys may be configured (newest first): the first writes, all are looked up (rotation).

Redis is an optimisation, never a dependency: any Redis error or a command slower than
``timeout_s`` makes this replica use only its own cache for ``retry_after_s``, then Redis is
tried again. No request fails because of Redis.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway_plugins.token_exchange.cache_config import RedisCacheConfig
from gateway_plugins.token_exchange.exchanger import Exchanged
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from kmg_common.settings import SettingsError, read_secret

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 32
_FORMAT = b"\x01"  # value layout version
_KID_BYTES = 4
_NONCE_BYTES = 12
_SALT = b"kube-mcp-gateway token-exchange shared cache"

Fetch = Callable[[], Awaitable[tuple[Exchanged, float]]]
SharedResult = Literal["hit", "waited", "stored", "wait_timeout", "fallback", "undecryptable"]

# Delete the lock only when it still holds our value (another replica may own it by now).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class CacheKeyError(SettingsError):
    """The encryption key material is unusable (too short, missing)."""


@dataclass(frozen=True)
class CacheKey:
    """One configured key: an AEAD key for values and an HMAC key for entry names."""

    kid: bytes
    aead: AESGCM
    name_key: bytes


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose).derive(secret)


def derive_key(secret: str) -> CacheKey:
    raw = secret.encode()
    return CacheKey(
        kid=_derive(raw, b"key id")[:_KID_BYTES],
        aead=AESGCM(_derive(raw, b"value encryption (AES-256-GCM)")),
        name_key=_derive(raw, b"entry names (HMAC-SHA256)"),
    )


def parse_keys(text: str) -> list[CacheKey]:
    """Keys separated by newlines, spaces or commas; newest first. Each >= 32 characters."""
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    if not parts:
        raise CacheKeyError("cache.redis.encryption_keys: no key given")
    for index, part in enumerate(parts):
        if len(part) < MIN_KEY_CHARS:
            raise CacheKeyError(
                f"cache.redis.encryption_keys: key {index + 1} has {len(part)} characters, "
                f"fewer than {MIN_KEY_CHARS}; generate one with `openssl rand -base64 32`"
            )
    return [derive_key(p) for p in parts]


@dataclass(frozen=True)
class SharedCacheMaterial:
    """Secrets read at start: a missing file or env var fails the start, not a request."""

    keys: list[CacheKey]
    password: str | None


def load_material(config: RedisCacheConfig) -> SharedCacheMaterial:
    keys = parse_keys(
        read_secret(
            "cache.redis.encryption_keys",
            file=config.encryption_keys_file,
            env=config.encryption_keys_env,
        )
    )
    password = None
    if config.password_file is not None or config.password_env is not None:
        password = read_secret(
            "cache.redis.password", file=config.password_file, env=config.password_env
        )
    return SharedCacheMaterial(keys, password)


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def entry_digest(key: CacheKey, parts: Sequence[str]) -> str:
    mac = hmac.new(key.name_key, b"v1", hashlib.sha256)
    for part in parts:
        mac.update(_field(part.encode()))
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def seal(key: CacheKey, name: str, entry: Exchanged, keep_until: float) -> bytes:
    plain = json.dumps(
        {"t": entry.token, "e": entry.expires_at, "s": entry.scope, "u": keep_until},
        separators=(",", ":"),
    ).encode()
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _FORMAT + key.kid + nonce + key.aead.encrypt(nonce, plain, name.encode())


def unseal(key: CacheKey, name: str, value: bytes) -> tuple[Exchanged, float] | None:
    """``(entry, keep_until)``; None for a value of another format or key. Raises InvalidTag
    for a value that was altered or moved from another entry."""
    head = len(_FORMAT) + _KID_BYTES
    if len(value) <= head + _NONCE_BYTES or value[:1] != _FORMAT or value[1:head] != key.kid:
        return None
    nonce = value[head : head + _NONCE_BYTES]
    plain = json.loads(key.aead.decrypt(nonce, value[head + _NONCE_BYTES :], name.encode()))
    entry = Exchanged(str(plain["t"]), float(plain["e"]), plain.get("s"))
    return entry, float(plain["u"])


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class SharedTokenCache:
    """``get_or_fetch`` is the API (see the module docstring)."""

    def __init__(
        self,
        config: RedisCacheConfig,
        material: SharedCacheMaterial,
        client: Any,
        *,
        metrics: ExchangeMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = config
        self._keys = material.keys
        self._redis = client
        self._metrics = metrics
        self._clock = clock
        self._release = client.register_script(_RELEASE)
        self._errors = _redis_errors()
        self._down_until = 0.0
        self._down_reason: str | None = None
        self._set_up(True)

    # -- health ---------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while this replica ignores Redis after a failure (``retry_after_s``)."""
        return time.monotonic() >= self._down_until

    def _set_up(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.shared_cache_up.set(1 if up else 0)

    def _trip(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:200]
        if self._down_reason is None:
            log.warning(
                "shared token cache (Redis at %s) unavailable, this replica uses its own cache "
                "for %ss, then tries again: %s",
                self._where,
                self._cfg.retry_after_s,
                reason,
            )
        self._down_reason = reason
        self._down_until = time.monotonic() + self._cfg.retry_after_s
        self._set_up(False)

    def _healthy(self) -> None:
        if self._down_reason is not None:
            log.info("shared token cache (Redis at %s) answers again", self._where)
            self._down_reason = None
            self._set_up(True)

    @property
    def _where(self) -> str:
        return self._cfg.url  # validated: carries no credentials

    def _count(self, result: SharedResult) -> None:
        if self._metrics is not None:
            self._metrics.shared_count(result)

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except self._errors as exc:
            self._trip(exc)
            return False
        self._healthy()
        return True

    async def close(self) -> None:
        await self._redis.aclose()

    # -- names and values ------------------------------------------------------------------
    def _names(self, parts: Sequence[str]) -> tuple[list[tuple[CacheKey, str]], str]:
        """The entry's name under each key (newest first) and its lock's name."""
        prefix = self._cfg.key_prefix
        digests = [(key, entry_digest(key, parts)) for key in self._keys]
        names = [(key, f"{prefix}t:{digest}") for key, digest in digests]
        return names, f"{prefix}l:{digests[0][1]}"

    async def _read(self, names: list[tuple[CacheKey, str]]) -> tuple[Exchanged, float] | None:
        values = await self._redis.mget([name for _, name in names])
        now = self._clock()
        for (key, name), value in zip(names, values, strict=True):
            if value is None:
                continue
            try:
                opened = unseal(key, name, value)
            except (InvalidTag, ValueError, KeyError, TypeError):
                # Altered, moved from another entry, or written with a different key under the
                # same name: never used. Logged without the name (it identifies a session).
                self._count("undecryptable")
                log.warning("shared token cache: an entry failed authentication; ignored")
                continue
            if opened is None:
                continue
            entry, keep_until = opened
            if keep_until > now:
                return entry, keep_until - now
        return None

    async def _store(self, names: list[tuple[CacheKey, str]], entry: Exchanged, ttl: float) -> None:
        key, name = names[0]
        ttl_ms = int(ttl * 1000)
        if ttl_ms <= 0:
            return
        await self._redis.set(name, seal(key, name, entry, self._clock() + ttl), px=ttl_ms)

    # -- the flow ----------------------------------------------------------------------------
    async def get_or_fetch(self, parts: Sequence[str], fetch: Fetch) -> tuple[Exchanged, float]:
        """The entry for ``parts`` (subject token, audience, scope, hops) from Redis, another
        replica's exchange, or ``fetch`` (this replica's exchange, stored for the others)."""
        if not self.available:
            self._count("fallback")
            return await fetch()
        names, lock = self._names(parts)
        owner = secrets.token_urlsafe(16)
        try:
            found, holding = await self._find_or_lock(names, lock, owner)
        except self._errors as exc:
            self._trip(exc)
            self._count("fallback")
            return await fetch()
        self._healthy()
        if found is not None:
            return found
        if not holding:
            self._count("wait_timeout")
        return await self._fetch_and_share(names, lock if holding else None, owner, fetch)

    async def _find_or_lock(
        self, names: list[tuple[CacheKey, str]], lock: str, owner: str
    ) -> tuple[tuple[Exchanged, float] | None, bool]:
        """``(entry, False)`` when Redis has it (at once or after waiting for the replica that
        holds the lock), ``(None, True)`` when this replica took the lock, ``(None, False)``
        when the wait ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cfg.lock_wait_s
        delay = 0.005
        first = True
        while True:
            found = await self._read(names)
            if found is not None:
                self._count("hit" if first else "waited")
                return found, False
            first = False
            if await self._redis.set(lock, owner, nx=True, px=self._lock_ttl_ms):
                # The holder before us may have stored and released between our read and our
                # lock: look once more before exchanging.
                found = await self._read(names)
                if found is None:
                    return None, True
                await self._release(keys=[lock], args=[owner])
                self._count("waited")
                return found, False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None, False
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    @property
    def _lock_ttl_ms(self) -> int:
        return max(1, int(self._cfg.lock_ttl_s * 1000))

    async def _fetch_and_share(
        self, names: list[tuple[CacheKey, str]], lock: str | None, owner: str, fetch: Fetch
    ) -> tuple[Exchanged, float]:
        """Exchange here, store the result for the other replicas, release the lock we hold."""
        try:
            entry, ttl = await fetch()
        except BaseException:
            if lock is not None:
                await self._quietly(self._release(keys=[lock], args=[owner]))
            raise
        if lock is not None:
            self._count("stored")
        await self._quietly(self._store(names, entry, ttl))
        if lock is not None:
            await self._quietly(self._release(keys=[lock], args=[owner]))
        return entry, ttl

    async def _quietly(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except self._errors as exc:
            self._trip(exc)


def open_shared_cache(
    config: RedisCacheConfig,
    material: SharedCacheMaterial,
    *,
    metrics: ExchangeMetrics | None = None,
) -> SharedTokenCache:
    """One connection pool for the service's life (call inside the running loop)."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    no_retry = Retry(NoBackoff(), 0)  # a failed command counts as Redis down, at once
    options: dict[str, Any] = {
        "retry": no_retry,
        "max_connections": config.pool_size,
        "timeout": config.timeout_s,  # waiting for a free pooled connection
        "socket_timeout": config.timeout_s,
        "socket_connect_timeout": config.connect_timeout_s,
        "username": config.username,
        "password": material.password,
        "health_check_interval": 0,
    }
    if config.url.startswith("rediss://") and config.ca_file is not None:
        options["ssl_ca_certs"] = str(Path(config.ca_file))
    pool = BlockingConnectionPool.from_url(config.url, **options)
    client = Redis(connection_pool=pool, retry=no_retry)
    return SharedTokenCache(config, material, client, metrics=metrics)
