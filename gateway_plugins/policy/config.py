"""Typed settings of the policy service (YAML ← ``KMG_POLICY_*`` env vars ← CLI flags).

Every field has a default and a description; ``mcp-policy serve --help`` and the README list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import DEFAULT_ALGORITHMS, IssuerConfig
from gateway_plugins.policy.engine_guard import EmbeddedVerifySettings
from gateway_plugins.policy.wristband import WristbandForm
from kmg_common.host_origin import (
    ALLOWED_HOSTS_DOC,
    ALLOWED_ORIGINS_DOC,
    HostPatterns,
    OriginPatterns,
)
from kmg_common.settings import StrictModel
from kmg_common.tracing import TracingSettings

SERVICE = "policy"


class OpaSettings(StrictModel):
    """The OPA server used when ``engine: opa``."""

    url: str = Field(default="http://127.0.0.1:8181", description="OPA base URL.")
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="Per-query timeout.")
    load_policies: bool = Field(
        default=True,
        description="Push policies/ and data/ into OPA at start and after OPA restarts; "
        "false when OPA loads them itself (bundle or files).",
    )
    token_file: Path | None = Field(default=None, description="Bearer token file for OPA's API.")
    ca_file: Path | None = Field(default=None, description="CA bundle for an https OPA.")


class WristbandSettings(StrictModel):
    """The signed tool-list header for the broker (tools/list)."""

    signing_key_file: Path | None = Field(
        default=None,
        description="PEM EC P-256 private key; unset: tools/list answers carry no header.",
    )
    key_id: str | None = Field(default=None, description="JWS kid; default: the JWK thumbprint.")
    issuer: str = Field(default="mcp-policy", description="iss of the signed header.")
    lifetime_s: int = Field(default=300, gt=0, le=3600, description="exp - iat, seconds.")
    form: WristbandForm = Field(
        default=WristbandForm.BOTH,
        description="x-authorized-tools (allowed-tools, older broker releases), "
        "x-mcp-authorized (allowed-capabilities, read by the MCP Gateway v0.9.0 broker) or both.",
    )
    cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="Reuse a user's computed list this long (0: never); never past half "
        "the header's lifetime.",
    )


class AuthSettings(StrictModel):
    """Bearer tokens: verified against the issuers' JWKS, never trusted unverified."""

    issuers: list[IssuerConfig] = Field(default_factory=list, description="Trusted issuers.")
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    ca_file: Path | None = Field(default=None, description="CA bundle for the issuers' HTTPS.")
    verified_cache_ttl_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Reuse a verified token this long before checking its signature and keys "
        "again (never past exp; exp/nbf are checked on every request); 0: every request.",
    )
    jwks_min_refetch_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="Refetch an issuer's JWKS at most this often (a token with an unknown kid).",
    )
    resource_metadata_url: str | None = Field(
        default=None,
        description="Advertised in WWW-Authenticate on 401 (the protected-resource metadata).",
    )


class ReloadSettings(StrictModel):
    """Policy changes at run time, from files (e.g. mounted ConfigMaps)."""

    watch_files: bool = Field(
        default=True,
        description="Watch policies_dir, data_dirs and catalogue_file and reload the policy "
        "when they change (a mounted ConfigMap's ..data swap included); a policy that does not "
        "load is refused and the last good one kept.",
    )
    interval_s: float = Field(
        default=1.0, gt=0, le=300, description="How often the files are checked."
    )


class BundleSettings(StrictModel):
    """An OPA bundle service as the policy's source (instead of policies_dir / data_dirs)."""

    url: str | None = Field(
        default=None,
        description="Bundle URL (tar.gz as opa build or mcp-policy bundle writes it); set: the "
        "policy and its data come from it, polled with If-None-Match/ETag as OPA does, and "
        "decisions are refused (503) until the first bundle is loaded.",
    )
    min_delay_s: float = Field(
        default=1.0, gt=0, le=3600, description="Shortest wait between two polls."
    )
    max_delay_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="Longest wait between two polls (random in between).",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Timeout of one download.")
    max_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Largest bundle, downloaded and unpacked; larger ones are refused.",
    )
    token_file: Path | None = Field(
        default=None, description="Bearer token file for the bundle service."
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for an https bundle URL.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bundle.url {value!r} must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("bundle.url must not carry credentials; use bundle.token_file")
        return value.strip()


class RbacTokenExchange(StrictModel):
    """RFC 8693 exchange of the user's token for one the cluster accepts (before its review)."""

    url: str = Field(
        description="Token endpoint (POST, form): the token exchange service's /token facade "
        "or the identity provider's own."
    )
    audience: str = Field(
        description="audience asked for: what the cluster accepts (e.g. the MCP server's name, "
        "the audience the backend's tokens carry)."
    )
    client_id: str | None = Field(default=None, description="HTTP Basic client id.")
    client_secret_file: Path | None = Field(default=None, description="File with the secret.")
    ca_file: Path | None = Field(default=None, description="CA bundle for an https url.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _plain_http_url(value, "rbac_list.clusters[].token_exchange.url")

    def client_secret(self) -> str | None:
        if self.client_secret_file is None:
            return None
        return self.client_secret_file.read_text(encoding="utf-8").strip()


class RbacCluster(StrictModel):
    """The cluster behind one MCP server, asked what the user's own token may do."""

    server: str = Field(description="MCP server name (x-mcp-servername, catalogue key).")
    api_server: str = Field(description="The cluster's API server URL (https).")
    ca_file: Path | None = Field(default=None, description="CA bundle of the API server.")
    namespaces: list[str] = Field(
        default_factory=lambda: ["default"],
        min_length=1,
        description="Namespace scope: one SelfSubjectRulesReview each; a tool is kept when "
        "the rules of any of them grant it (cluster-wide grants show in every namespace).",
    )
    token_exchange: RbacTokenExchange | None = Field(
        default=None,
        description="Exchange the user's token first (the token tools/list carries is addressed "
        "to the gateway; the cluster may accept only the server's audience); unset: the "
        "request's token as-is.",
    )

    @field_validator("api_server")
    @classmethod
    def _https(cls, value: str) -> str:
        url = _plain_http_url(value, "rbac_list.clusters[].api_server")
        if not url.startswith("https://"):
            raise ValueError(f"rbac_list api_server {value!r} must be https (tokens go there)")
        return url


class RbacListSettings(StrictModel):
    """tools/list that knows the cluster's RBAC (off by default)."""

    enabled: bool = Field(
        default=False,
        description="Intersect the role-derived tools/list with what the user's own token may "
        "do on each configured server's cluster (SelfSubjectRulesReview); a failed review lists "
        "the role-derived tools (fail soft: tools/call is still decided by the policy and the "
        "cluster's RBAC).",
    )
    clusters: list[RbacCluster] = Field(
        default_factory=list,
        description="One entry per MCP server to check; servers not listed keep the "
        "role-derived list.",
    )
    cache_ttl_s: float = Field(
        default=30.0, gt=0, le=3600, description="Reuse a user's review results this long."
    )
    failure_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="After a failed review, list by role only this long before asking again.",
    )
    timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Bound on a user's reviews of one server (exchange, queue and calls).",
    )
    max_concurrent_reviews: int = Field(
        default=8, ge=1, le=1024, description="Review (and exchange) calls in flight at once."
    )
    max_waiting_reviews: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Reviews queued for a slot; beyond that tools/list lists by role only.",
    )
    cache_size: int = Field(
        default=10_000, ge=1, description="Most (user, server) review results remembered."
    )

    @model_validator(mode="after")
    def _clusters(self) -> RbacListSettings:
        if self.enabled and not self.clusters:
            raise ValueError("rbac_list.enabled needs at least one entry in rbac_list.clusters")
        servers = [c.server for c in self.clusters]
        if len(servers) != len(set(servers)):
            raise ValueError("rbac_list.clusters: each server may be listed once")
        return self


def _plain_http_url(value: str, name: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} {value!r} must be an http(s) URL")
    if parts.username or parts.password:
        raise ValueError(f"{name} must not carry credentials")
    return value.strip().rstrip("/")


class PolicySettings(StrictModel):
    """The policy service."""

    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8282, ge=0, le=65535, description="Listen port.")
    allowed_hosts: HostPatterns = Field(default_factory=list, description=ALLOWED_HOSTS_DOC)
    allowed_origins: OriginPatterns = Field(default_factory=list, description=ALLOWED_ORIGINS_DOC)
    engine: Literal["embedded", "opa"] = Field(
        default="embedded", description="embedded (in-process Rego) or opa (an OPA server)."
    )
    policies_dir: Path = Field(
        default=Path("policies"), description="Rego modules (tests skipped)."
    )
    data_dirs: list[Path] | None = Field(
        default=None, description="Data files (JSON settings); default <policies_dir>/data."
    )
    catalogue_file: Path | None = Field(
        default=None,
        description="JSON {server: [MCP tool, ...]}: the tools tools/list lists per server "
        "(names and annotations); unset: the user's roles name them.",
    )
    decision_cache_size: int = Field(
        default=4096,
        ge=0,
        description="Embedded engine: remember this many decisions (exact: same input, same "
        "policy); 0 turns the cache off.",
    )
    embedded_verify: EmbeddedVerifySettings = Field(
        default_factory=EmbeddedVerifySettings,
        description="Embedded engine: before serving, its answers are checked against the "
        "policy's test corpus and OPA (or a verification record); a policy rego-cpp evaluates "
        "differently from OPA is refused at start.",
    )
    opa: OpaSettings = Field(default_factory=OpaSettings)
    reload: ReloadSettings = Field(default_factory=ReloadSettings)
    bundle: BundleSettings = Field(default_factory=BundleSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    wristband: WristbandSettings = Field(default_factory=WristbandSettings)
    rbac_list: RbacListSettings = Field(
        default_factory=RbacListSettings,
        description="tools/list filtered by the cluster's RBAC for the user's own token.",
    )
    decision_log: str | None = Field(
        default="-", description="Decision log: a file path, '-' for stderr, null for off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest request body.")
    caller_auth: CallerAuthConfig = Field(
        default_factory=CallerAuthConfig,
        description="The credential the gateway (Envoy, Authorino, the combined check) presents "
        "on /check, /v1/decide and /v1/filter.",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (OTLP/HTTP); off unless endpoint is set.",
    )

    @model_validator(mode="after")
    def _need_issuers(self) -> PolicySettings:
        if not self.auth.issuers:
            raise ValueError("auth.issuers: configure at least one trusted token issuer")
        problem = self.caller_auth.problem()
        if problem is not None:
            raise ValueError(problem)
        return self
