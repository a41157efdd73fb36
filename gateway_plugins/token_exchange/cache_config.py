"""Settings of the token cache (``cache``): this replica's memory cache and, with
``cache.backend: redis``, the encrypted cache the replicas share (``cache.redis``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from kmg_common.settings import StrictModel


class RedisCacheConfig(StrictModel):
    """The shared cache of ``cache.backend: redis`` (several replicas, one Keycloak exchange)."""

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL, redis:// or rediss:// (TLS), host, port and database; no "
        "credentials in it (password_file / password_env).",
    )
    username: str | None = Field(
        default=None, description="ACL user name (Redis 6+); unset: the default user."
    )
    password_file: Path | None = Field(default=None, description="File holding the password.")
    password_env: str | None = Field(default=None, description="Env var holding the password.")
    ca_file: Path | None = Field(default=None, description="CA bundle for a rediss:// server.")
    encryption_keys_file: Path | None = Field(
        default=None,
        description="File holding the key(s) cached tokens are encrypted with (AES-256-GCM), "
        "one per line, newest first, each >= 32 characters (e.g. openssl rand -base64 32); the "
        "first encrypts, every one decrypts (rotation).",
    )
    encryption_keys_env: str | None = Field(
        default=None, description="Env var holding the key(s), separated by whitespace or ','."
    )
    key_prefix: str = Field(
        default="kmg:token-exchange:",
        min_length=1,
        max_length=64,
        description="Prefix of every Redis key; one per deployment sharing a Redis.",
    )
    connect_timeout_s: float = Field(
        default=0.25, gt=0, le=10, description="Bound on opening a connection."
    )
    timeout_s: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="Bound on one Redis command; slower counts as Redis down (this replica "
        "uses its own cache meanwhile).",
    )
    pool_size: int = Field(default=32, ge=1, le=1024, description="Max connections to Redis.")
    lock_ttl_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Life of the lock one replica holds while it exchanges (a crashed "
        "holder's lock expires after this).",
    )
    lock_wait_s: float = Field(
        default=3.0,
        ge=0,
        le=60,
        description="How long other replicas wait for the holder's token before exchanging "
        "themselves.",
    )
    retry_after_s: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="After a Redis failure, use only this replica's cache this long, then try "
        "Redis again.",
    )

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(
                f"cache.redis.url {value!r} is not a redis:// or rediss:// URL with a host, "
                "e.g. redis://redis.kmg-system.svc.cluster.local:6379/0"
            )
        if parts.username or parts.password:
            raise ValueError(
                "cache.redis.url carries credentials; remove them and set cache.redis.username "
                "and cache.redis.password_file (or password_env) instead"
            )
        return value.strip()


class CacheConfig(StrictModel):
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: each replica caches alone; redis: replicas share exchanged tokens "
        "(encrypted) through cache.redis, with this replica's memory cache in front and as "
        "fallback while Redis is down.",
    )
    redis: RedisCacheConfig = Field(default_factory=RedisCacheConfig)
    max_entries: int = Field(default=10_000, ge=1, description="LRU bound of cached tokens.")
    expiry_margin_s: float = Field(
        default=30.0, ge=0, description="Drop a cached token this long before its 'exp'."
    )
    min_ttl_s: float = Field(
        default=5.0, ge=0, description="Do not cache tokens that would live shorter than this."
    )
    negative_ttl_s: float = Field(
        default=5.0, ge=0, description="Remember an STS refusal this long (0 = never)."
    )

    @model_validator(mode="after")
    def _redis_needs_a_key(self) -> CacheConfig:
        redis = self.redis
        if self.backend == "redis" and not (
            redis.encryption_keys_file or redis.encryption_keys_env
        ):
            raise ValueError(
                "cache.backend redis needs cache.redis.encryption_keys_file (or "
                "encryption_keys_env): cached tokens are credentials and are stored encrypted"
            )
        return self
