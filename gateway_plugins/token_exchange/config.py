"""Typed settings of the token exchange service (YAML ← ``KMG_TOKEN_EXCHANGE_*`` ← CLI flags).

Secrets (STS client secrets, private keys, facade client secrets) are referenced by file or env
var name only; :mod:`kmg_common.settings` refuses them in plain text.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import DEFAULT_ALGORITHMS, IssuerConfig
from kmg_common.host_origin import (
    ALLOWED_HOSTS_DOC,
    ALLOWED_ORIGINS_DOC,
    HostPatterns,
    OriginPatterns,
)
from kmg_common.tracing import TracingSettings

SERVICE = "token-exchange"

# Headers the policy service's check sets on allow for upstream (the MCP broker): the signed tool
# list, in its legacy and current forms.
POLICY_UPSTREAM_HEADERS = ("x-authorized-tools", "x-mcp-authorized")
# The policy service's JSON APIs: not ext_authz answers (a deny there is a 200).
POLICY_JSON_APIS = ("/v1/decide", "/v1/filter")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientAuth(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name, not a secret
    PRIVATE_KEY_JWT = "private_key_jwt"


class STSConfig(_Strict):
    """One token endpoint (a Keycloak realm) and the client this service authenticates as."""

    token_url: str = Field(description="Token endpoint, e.g. https://kc/realms/mcp/protocol/...")
    issuer: str | None = Field(
        default=None,
        description="Realm issuer URL for the readiness probe; derived from token_url if unset.",
    )
    client_id: str = Field(description="This service's client at that realm.")
    client_auth: ClientAuth = Field(
        default=ClientAuth.CLIENT_SECRET_BASIC,
        description="client_secret_basic, client_secret_post or private_key_jwt.",
    )
    client_secret_file: Path | None = Field(default=None, description="File holding the secret.")
    client_secret_env: str | None = Field(default=None, description="Env var holding the secret.")
    private_key_file: Path | None = Field(
        default=None, description="PEM private key for private_key_jwt client authentication."
    )
    private_key_alg: Literal["RS256", "PS256", "ES256"] = Field(
        default="RS256", description="Signing algorithm of the client assertion."
    )
    private_key_kid: str | None = Field(
        default=None, description="'kid' header of the client assertion (key registered there)."
    )
    timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Per-call timeout; a slower STS answers 503."
    )

    @model_validator(mode="after")
    def _auth_material(self) -> STSConfig:
        if self.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            if self.private_key_file is None:
                raise ValueError("client_auth private_key_jwt needs private_key_file")
        elif self.client_secret_file is None and self.client_secret_env is None:
            raise ValueError(
                f"client_auth {self.client_auth.value} needs client_secret_file "
                "or client_secret_env"
            )
        return self

    @property
    def issuer_url(self) -> str:
        if self.issuer:
            return self.issuer
        suffix = "/protocol/openid-connect/token"
        return self.token_url.removesuffix(suffix)


class Grant(StrEnum):
    TOKEN_EXCHANGE = "token_exchange"  # noqa: S105 - RFC 8693 (Keycloak standard token exchange V2)
    JWT_BEARER = "jwt_bearer"  # RFC 7523 JWT authorization grant (Keycloak 26.5+)


class StepConfig(_Strict):
    """One hop: present the current token at ``sts`` and take the token it issues."""

    sts: str = Field(description="Name of an entry under 'sts'.")
    grant: Grant = Field(
        default=Grant.TOKEN_EXCHANGE,
        description="token_exchange (RFC 8693) or jwt_bearer (RFC 7523, cross-realm hop).",
    )
    audience: list[str] = Field(
        default_factory=list,
        description="token_exchange only: 'audience' values (default: the target's audience).",
    )
    scope: str | None = Field(default=None, description="Space-separated scopes to request.")


class TargetConfig(_Strict):
    """A token audience callers can ask for, and how to obtain a token for it."""

    audience: str = Field(description="What callers ask for (x-mcp-servername / 'audience').")
    steps: list[StepConfig] = Field(
        default_factory=list, description="Hops in order; empty = pass the caller's token as is."
    )
    expect_audience: str | None = Field(
        default=None,
        description="'aud' the final token must carry (default: audience), checked at the end.",
    )
    skip_when: Literal["aud_contains", "aud_exact", "never"] = Field(
        default="aud_exact",
        description="Forward the caller's token unchanged when its 'aud' is exactly the target "
        "(aud_exact), already contains it among others (aud_contains: the token then reaches "
        "the target with every other audience it carries), or always exchange (never).",
    )
    subject_audiences: list[str] = Field(
        default_factory=list,
        description="The caller's token must carry one of these in 'aud' to get a token for this "
        "target (e.g. the gateway's client id for an MCP server, the backend's for a "
        "cross-domain cluster); empty: any token the validation accepts.",
    )
    allowed_scopes: list[str] = Field(
        default_factory=list,
        description="Scopes a facade caller may request; they replace the last hop's scope.",
    )

    @property
    def final_audience(self) -> str:
        return self.expect_audience or self.audience


class RedisCacheConfig(_Strict):
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


class CacheConfig(_Strict):
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


class ValidationConfig(_Strict):
    issuers: list[IssuerConfig] = Field(min_length=1, description="Trusted token issuers.")
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description="Accepted signature algorithms (asymmetric only; none/HS* refused).",
    )
    leeway_s: float = Field(default=30.0, ge=0, le=300, description="Clock skew for exp/nbf.")
    max_token_bytes: int = Field(
        default=16 * 1024, ge=512, description="Longer bearer tokens are refused."
    )
    jwks_min_refetch_interval_s: float = Field(
        default=30.0, ge=0, description="Refetch a JWKS at most this often (unknown 'kid')."
    )
    verified_cache_size: int = Field(
        default=4096, ge=0, description="Tokens whose signature check is remembered (0 = off)."
    )
    verified_cache_ttl_s: float = Field(
        default=60.0, ge=0, description="Re-verify a remembered token's signature after this."
    )
    opaque_tokens: Literal["reject", "passthrough"] = Field(
        default="reject",
        description="Non-JWT bearer tokens: refuse, or forward unchanged where no exchange runs.",
    )


class ExtAuthzConfig(_Strict):
    target_header: str = Field(
        default="x-mcp-servername", description="Request header naming the target audience."
    )
    passthrough_targets: list[str] = Field(
        default_factory=lambda: ["mcpBroker"],
        description="Targets (or a missing header) that get the caller's validated token as is.",
    )
    targets: list[str] = Field(
        default_factory=list,
        description="Targets /check and /ext-authz/combined issue tokens for: the MCP servers "
        "the gateway routes (x-mcp-servername values). Other configured targets (e.g. a "
        "cross-domain cluster) are issued only by POST /token to its authenticated clients; a "
        "check naming one is refused (403 target_not_routable).",
    )
    audiences: list[str] = Field(
        default_factory=list,
        description="The caller's token at /check and /ext-authz/combined must carry one of these "
        "in 'aud' (the gateway's client id, e.g. mcp-gateway), so a token issued for a server "
        "behind the gateway cannot be replayed at it; empty: the validation audiences.",
    )
    resource_metadata_url: str | None = Field(
        default=None,
        description="For WWW-Authenticate; default "
        "https://<host>/.well-known/oauth-protected-resource.",
    )
    policy_url: str | None = Field(
        default=None,
        description="The policy service's ext_authz check endpoint (e.g. "
        "http://policy:8080/check) that /ext-authz/combined asks after the exchange; "
        "unset: /ext-authz/combined answers 503.",
    )
    policy_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Timeout of one policy_url call; slower, unreachable or 5xx answers 503.",
    )
    policy_upstream_headers: list[str] = Field(
        default_factory=lambda: list(POLICY_UPSTREAM_HEADERS),
        description="Headers of the policy's 200 answer passed on (the signed tool list).",
    )
    policy_caller_secret_file: Path | None = Field(
        default=None,
        description="File holding the caller secret the policy service's check requires (sent "
        "in policy_caller_header); unset: this service's own caller_auth secret.",
    )
    policy_caller_secret_env: str | None = Field(
        default=None, description="Env var holding that secret (instead of the file)."
    )
    policy_caller_header: str = Field(
        default="x-kmg-caller-secret",
        description="Header the policy service reads the caller secret from.",
    )

    @field_validator("policy_url")
    @classmethod
    def _policy_check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"policy_url {value!r} is not an http(s) URL; expected e.g. "
                "http://policy.kmg-system.svc.cluster.local:8080/check"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"policy_url {value!r} must not carry a query or fragment")
        path = parts.path.rstrip("/")
        if path.endswith(POLICY_JSON_APIS):
            raise ValueError(
                f"policy_url {value!r} names the policy service's JSON API ({parts.path}), which "
                "answers every decision with 200 and no signed tool list; point it at the "
                "service's ext_authz check endpoint instead, e.g. "
                f"{parts.scheme}://{parts.netloc}/check"
            )
        return value.strip().rstrip("/")

    @field_validator("policy_upstream_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        return [h.strip().lower() for h in value if h.strip()]


class FacadeClient(_Strict):
    client_id: str = Field(description="Client id presented with HTTP Basic.")
    client_secret_file: Path | None = Field(default=None, description="File holding its secret.")
    client_secret_env: str | None = Field(default=None, description="Env var holding its secret.")


class FacadeConfig(_Strict):
    enabled: bool = Field(default=True, description="Serve POST /token.")
    clients: list[FacadeClient] = Field(
        default_factory=list, description="Clients allowed to call POST /token (HTTP Basic)."
    )


class BreakerConfig(_Strict):
    failures: int = Field(default=5, ge=1, description="Consecutive STS failures that open it.")
    cooldown_s: float = Field(default=2.0, ge=0, description="Fail fast this long once open.")


class Settings(_Strict):
    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8081, ge=0, le=65535, description="Listen port.")
    allowed_hosts: HostPatterns = Field(default_factory=list, description=ALLOWED_HOSTS_DOC)
    allowed_origins: OriginPatterns = Field(default_factory=list, description=ALLOWED_ORIGINS_DOC)
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    ca_file: Path | None = Field(
        default=None, description="Extra CA bundle for Keycloak's TLS certificate (PEM)."
    )
    validation: ValidationConfig
    sts: dict[str, STSConfig] = Field(
        default_factory=dict, description="Token endpoints by name (referenced by steps)."
    )
    targets: list[TargetConfig] = Field(
        default_factory=list, description="Audiences callers may ask for."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    ext_authz: ExtAuthzConfig = Field(default_factory=ExtAuthzConfig)
    facade: FacadeConfig = Field(default_factory=FacadeConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    caller_auth: CallerAuthConfig = Field(
        default_factory=CallerAuthConfig,
        description="The credential the gateway presents on /check and /ext-authz/* (POST "
        "/token authenticates its clients itself).",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (OTLP/HTTP); off unless endpoint is set.",
    )

    @model_validator(mode="after")
    def _caller_auth(self) -> Settings:
        problem = self.caller_auth.problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _references(self) -> Settings:
        known = {t.audience for t in self.targets}
        unknown = [t for t in self.ext_authz.targets if t not in known]
        if unknown:
            raise ValueError(
                f"ext_authz.targets {unknown} are not configured under 'targets' "
                f"(configured: {sorted(known)})"
            )
        seen: set[str] = set()
        for target in self.targets:
            if target.audience in seen:
                raise ValueError(f"target '{target.audience}' is configured twice")
            seen.add(target.audience)
            for step in target.steps:
                if step.sts not in self.sts:
                    raise ValueError(
                        f"target '{target.audience}' uses sts '{step.sts}', which is not "
                        f"defined under 'sts' (defined: {sorted(self.sts)})"
                    )
        return self
