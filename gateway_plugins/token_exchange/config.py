"""Typed settings of the token exchange service (YAML ← ``KMG_TOKEN_EXCHANGE_*`` ← CLI flags).

Secrets (STS client secrets, private keys, facade client secrets) are referenced by file or env
var name only; :mod:`kmg_common.settings` refuses them in plain text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import DEFAULT_ALGORITHMS, IssuerConfig
from gateway_plugins.token_exchange.cache_config import CacheConfig
from gateway_plugins.token_exchange.sts_config import STSConfig, TargetConfig
from kmg_common.host_origin import (
    ALLOWED_HOSTS_DOC,
    ALLOWED_ORIGINS_DOC,
    HostPatterns,
    OriginPatterns,
)
from kmg_common.settings import StrictModel
from kmg_common.tracing import TracingSettings

SERVICE = "token-exchange"

# Headers the policy service's check sets on allow for upstream (the MCP broker): the signed tool
# list, in its legacy and current forms.
POLICY_UPSTREAM_HEADERS = ("x-authorized-tools", "x-mcp-authorized")
# The policy service's JSON APIs: not ext_authz answers (a deny there is a 200).
POLICY_JSON_APIS = ("/v1/decide", "/v1/filter")


class ValidationConfig(StrictModel):
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


class ExtAuthzConfig(StrictModel):
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


class FacadeClient(StrictModel):
    client_id: str = Field(description="Client id presented with HTTP Basic.")
    client_secret_file: Path | None = Field(default=None, description="File holding its secret.")
    client_secret_env: str | None = Field(default=None, description="Env var holding its secret.")


class FacadeConfig(StrictModel):
    enabled: bool = Field(default=True, description="Serve POST /token.")
    clients: list[FacadeClient] = Field(
        default_factory=list, description="Clients allowed to call POST /token (HTTP Basic)."
    )


class BreakerConfig(StrictModel):
    failures: int = Field(default=5, ge=1, description="Consecutive STS failures that open it.")
    cooldown_s: float = Field(default=2.0, ge=0, description="Fail fast this long once open.")


class Settings(StrictModel):
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
