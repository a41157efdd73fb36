"""Typed settings of the backend: defaults ← YAML ``--config FILE`` ← ``KMG_BACKEND_*`` env ← flags.

The cluster entries (where each API server is and how to trust it; never credentials) are in
:mod:`mcp_backend.cluster_config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kmg_common.host_origin import HostPatterns, OriginPatterns, public_url
from kmg_common.settings import SettingsError as SettingsError
from kmg_common.settings import env_prefix
from kmg_common.settings import load_settings as load_service_settings
from kmg_common.tracing import TracingSettings
from mcp_backend.cluster_config import (
    ClusterConfig,
    ConfigSection,
    clusters_from_kubeconfig,
    in_cluster_config,
)

SERVICE = "backend"
ENV_PREFIX = env_prefix(SERVICE)  # KMG_BACKEND_
_API_GROUP = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DEFAULT_CHART_SOURCES = ("oci://", "https://")


class DeniedKind(ConfigSection):
    """A kind denied in every tool: ``{group: rbac.authorization.k8s.io}`` or ``{kind: Secret}``."""

    group: str = Field("", description="API group ('' = core); with kind '*' the whole group")
    kind: str = Field(
        "*",
        description="Kind (e.g. ServiceAccount; matched case-insensitively, the plural resource "
        "name such as 'secrets' works too) or '*' for every kind",
    )

    @field_validator("group")
    @classmethod
    def _group_ok(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "core":
            return ""
        if value and not _API_GROUP.fullmatch(value):
            raise ValueError(
                f"group {value!r} is not an API group name such as 'apps' or "
                "'rbac.authorization.k8s.io' ('' for the core group; no version)"
            )
        return value

    @field_validator("kind")
    @classmethod
    def _kind_ok(cls, value: str) -> str:
        value = value.strip()
        if value != "*" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", value):
            raise ValueError(
                f"kind {value!r} is not a Kind such as 'Secret' (or its resource name 'secrets'), "
                "nor '*' for every kind of the group"
            )
        return value


DEFAULT_DENIED = (
    DeniedKind.model_validate({"group": "", "kind": "ServiceAccount"}),
    DeniedKind.model_validate({"group": "rbac.authorization.k8s.io", "kind": "*"}),
)


class Settings(ConfigSection):
    """Every option of ``mcp-backend serve``; each field is documented in the README."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8080, ge=0, le=65535, description="listen port")
    stateless: bool = Field(True, description="stateless Streamable HTTP (no session ids)")
    json_response: bool = Field(True, description="answer POSTs with JSON instead of SSE")
    single_exchange: bool = Field(
        True,
        description="with stateless + json_response: answer tools/call, tools/list, prompts "
        "and ping in the request's own task instead of a per-request SDK transport (same "
        "answers, less CPU); false = every request through the SDK's transport",
    )
    modern_protocol: bool = Field(
        True,
        description="serve the 2026-07-28 protocol (server/discover, per-request metadata) "
        "besides the initialize handshake; false: 2026 requests get the protocol's "
        "unsupported-version error and clients fall back to initialize (needed behind the MCP "
        "Gateway v0.9.0 broker, which shows a server speaking 2026 to 2026 clients only)",
    )
    allowed_hosts: HostPatterns = Field(
        default_factory=list,
        description="Host header values accepted ('name', or 'name:*' for any port) besides the "
        "loopback names, a specific listen address and resource_url's host; behind the MCP "
        "Gateway: the HTTPRoute hostname (the router's :authority on tools/call) and the Service "
        "name the broker calls. Any other Host gets 421 (DNS rebinding protection)",
    )
    allowed_origins: OriginPatterns = Field(
        default_factory=list,
        description="Origin header values of browser apps allowed to call, besides "
        "resource_url's origin (and http://localhost:*, http://127.0.0.1:*, http://[::1]:* when "
        "listening on loopback); any other Origin gets 403, requests without Origin are "
        "unaffected",
    )
    resource_url: str | None = Field(
        None, description="this server's public URL, for RFC 9728 metadata and WWW-Authenticate"
    )
    authorization_servers: list[str] = Field(
        default_factory=list, description="issuer URLs published in the RFC 9728 metadata"
    )
    accept_token_in_arguments: bool = Field(
        False, description="accept `access_token` inside tool arguments (clients without headers)"
    )
    # -- token binding: refuse tokens addressed to someone else (checked on every /mcp request)
    accepted_audiences: list[str] = Field(
        default_factory=list,
        description="a JWT bearer's `aud` must contain one of these (e.g. the server name the "
        "gateway exchanges tokens for); empty = no audience check. The signature is the API "
        "server's to verify: this only refuses genuine tokens meant for another party",
    )
    authorized_parties: list[str] = Field(
        default_factory=list,
        description="a JWT bearer's `azp` must be one of these (e.g. the gateway's client "
        "mcp-gateway, so a user's own token sent around the gateway is refused); empty = no check",
    )
    opaque_tokens: Literal["accept", "reject"] = Field(
        "reject",
        description="non-JWT bearers when accepted_audiences or authorized_parties is set: reject "
        "(they carry no audience to check) or accept (the API server authenticates them). The "
        "MCP Gateway's discovery credential is accepted by discovery_credential_file instead",
    )
    discovery_credential_file: Path | None = Field(
        None,
        description="file holding the MCP Gateway broker's discovery bearer (`credential` of its "
        "server entry; a leading 'Bearer ' is ignored): accepted on /mcp whatever the token "
        "binding, for listing only (tools/call with it is refused; it never reaches an API "
        "server)",
    )
    discovery_credential_env: str | None = Field(
        None, description="env var holding that discovery bearer (instead of the file)"
    )
    read_only: bool = Field(False, description="expose only tools annotated readOnly")
    disable_destructive: bool = Field(False, description="hide tools annotated destructive")
    enabled_tools: list[str] = Field(default_factory=list, description="allow-list of tools")
    disabled_tools: list[str] = Field(default_factory=list, description="deny-list of tools")
    denied_kinds: list[DeniedKind] = Field(
        default_factory=lambda: list(DEFAULT_DENIED),
        description="kinds refused in every tool (default: ServiceAccount and all of RBAC)",
    )
    redact_secrets: bool = Field(True, description="replace Secret values with *** everywhere")
    output_max_chars: int = Field(40_000, ge=1_000, description="cap of one tool's text output")
    default_list_limit: int = Field(500, ge=1, description="page size when `limit` is omitted")
    # -- what one call may take from everyone (issue 14): see "Bounds" in mcp_backend/README.md
    max_list_limit: int = Field(
        1000,
        ge=1,
        description="largest page a list call asks the API server for; a larger `limit` is "
        "lowered to it (the answer says so)",
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        description="most bytes read of one API server answer or of one helm command's output; "
        "a larger one is refused with an error saying how to narrow the query (list pages are "
        "read only until the output cap is reached)",
    )
    max_concurrent_calls_per_user: int = Field(
        8,
        ge=0,
        description="tool calls one user may have running at once (0 = no limit); the user is "
        "the token's iss + sub claims, or the token itself when it is not a JWT; more are refused "
        "with a tool error",
    )
    log_tail_lines: int = Field(100, ge=1, description="default tail of pods_log")
    log_grep_max_lines: int = Field(
        100_000,
        ge=1,
        description="lines at the end of a pod log (after since/sinceTime) that pods_log reads "
        "and filters, line by line as they arrive, when `grep` is given",
    )
    log_grep_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="most bytes of one pod log pods_log reads when `grep` is given (limitBytes); "
        "only matching lines are kept",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="timeout of one API server call")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP+TLS connect timeout")
    pool_size: int = Field(32, ge=1, description="max pooled connections per cluster")
    discovery_ttl_s: float = Field(300.0, ge=0, description="API discovery cache lifetime")
    discovery_timeout_s: float = Field(10.0, gt=0, description="bound on one discovery")
    exec_timeout_s: float = Field(60.0, gt=0, description="bound on one pods_exec")
    helm_binary: str = Field("helm", description="helm CLI path")
    helm_timeout_s: float = Field(300.0, gt=0, description="bound on one helm command")
    helm_chart_sources: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CHART_SOURCES),
        description="chart sources helm_install accepts: URL prefixes (end them with '/') and "
        "local directories (charts under them); `repo/chart` references are always accepted; "
        "local paths, file:// and http:// only when listed here",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of the JSON log lines on stderr"
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="objects allocated between young garbage collections (0 = Python's 700); "
        "big API responses otherwise trigger many costly collections",
    )
    otel_spans: bool = Field(
        False, description="keep the SDK's OpenTelemetry span per MCP message (costs CPU per call)"
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (OTLP/HTTP): a span per tool call and per API server "
        "call, the caller's W3C traceparent continued and sent on to the API server; off unless "
        "`endpoint` is set (YAML, or KMG_BACKEND_TRACING as JSON)",
    )
    kubeconfig: Path | None = Field(
        None, description="import clusters (server + CA only, never credentials) from a kubeconfig"
    )
    in_cluster: bool = Field(False, description="add the cluster the backend runs in")
    clusters: list[ClusterConfig] = Field(default_factory=list, description="cluster registry")

    @field_validator("resource_url")
    @classmethod
    def _resource_url_ok(cls, value: str | None) -> str | None:
        # Its host and origin are accepted by the Host and Origin checks: it must name a host.
        return None if value is None else public_url(value)

    @field_validator("helm_chart_sources")
    @classmethod
    def _chart_sources_ok(cls, value: list[str]) -> list[str]:
        for source in value:
            if not source.strip():
                raise ValueError("an empty chart source would allow every chart: remove it")
        return [s.strip() for s in value]

    def discovery_credential(self) -> str | None:
        """The broker's discovery bearer (file or env var; without a 'Bearer ' prefix)."""
        value: str | None = None
        if self.discovery_credential_file is not None:
            try:
                value = self.discovery_credential_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    "cannot read discovery_credential_file "
                    f"{self.discovery_credential_file}: {exc.strerror}"
                ) from None
        elif self.discovery_credential_env is not None:
            value = os.environ.get(self.discovery_credential_env)
        if value is None:
            return None
        value = value.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if len(value) < 16:
            raise SettingsError(
                "the discovery credential is empty or shorter than 16 characters: use a long "
                "random value (the same as the credential of the MCP Gateway's server entry)"
            )
        return value

    @model_validator(mode="after")
    def _list_limits(self) -> Settings:
        if self.default_list_limit > self.max_list_limit:
            raise ValueError(
                f"default_list_limit ({self.default_list_limit}) is above max_list_limit "
                f"({self.max_list_limit}): lower it or raise max_list_limit"
            )
        return self

    def exec_output_max_bytes(self) -> int:
        """Bytes of pods_exec output read before the exec stream is closed: four times the
        output cap (room for multi-byte characters and for stderr beside stdout)."""
        return 4 * self.output_max_chars

    @model_validator(mode="after")
    def _one_default(self) -> Settings:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate cluster names: {', '.join(dupes)}")
        defaults = [c.name for c in self.clusters if c.default]
        if len(defaults) > 1:
            raise ValueError(f"only one cluster may be default, got {', '.join(defaults)}")
        return self


# ---------------------------------------------------------------------------------------------
# Loading


def load_settings(
    config_file: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from the layers (:func:`kmg_common.settings.load_settings`, the loader
    of every service); ``overrides`` (CLI flags) with value None are ignored."""
    return load_service_settings(
        Settings, SERVICE, config_file=config_file, cli=overrides, environ=environ
    )


def effective_clusters(settings: Settings) -> list[ClusterConfig]:
    """Configured clusters, plus kubeconfig / in-cluster imports; exactly one is the default."""
    clusters = list(settings.clusters)
    if settings.kubeconfig is not None:
        known = {c.name for c in clusters}
        clusters += [
            c for c in clusters_from_kubeconfig(settings.kubeconfig) if c.name not in known
        ]
    if settings.in_cluster and all(c.name != "in-cluster" for c in clusters):
        clusters.append(in_cluster_config())
    if not clusters:
        raise SettingsError(
            "no cluster configured: add `clusters:` to the config file, "
            "or set kubeconfig / in_cluster"
        )
    defaults = [c for c in clusters if c.default]
    if not defaults:
        clusters[0] = clusters[0].model_copy(update={"default": True})
    elif len(defaults) > 1:
        keep = defaults[0].name
        clusters = [c.model_copy(update={"default": c.name == keep}) for c in clusters]
    return clusters
