"""Settings of the router/broker stand-in and the tool catalogue both halves share.

The YAML mirrors the upstream servers config (``servers: [{name, url, prefix}]``) plus the
broker's options (``TRUSTED_HEADER_PUBLIC_KEY``, ``--enforce-capability-filtering``)::

    router: {host: 127.0.0.1, port: 50051}
    broker: {host: 127.0.0.1, port: 8080}
    servers:
      - {name: mcp-test/kubernetes-mcp, url: "http://127.0.0.1:8000/mcp", prefix: ""}
    trusted_header_public_key_file: /path/wristband-public.pem
    enforce_capability_filtering: true
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BROKER_SERVER_NAME = "mcpBroker"  # x-mcp-servername of every request the broker answers
CURRENT_HEADER = "x-mcp-authorized"  # claim allowed-capabilities (current releases)
LEGACY_HEADER = "x-authorized-tools"  # claim allowed-tools (older releases)
HINT_KEYS = (
    ("readOnly", "readOnlyHint"),
    ("destructive", "destructiveHint"),
    ("idempotent", "idempotentHint"),
    ("openWorld", "openWorldHint"),
)


class ConfigError(Exception):
    """The stand-in's configuration is unusable; the message names the field."""


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class Server:
    """One MCP server behind the gateway (upstream ``MCPServerRegistration``)."""

    name: str
    url: str
    prefix: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    router: Listen
    broker: Listen
    servers: tuple[Server, ...]
    trusted_header_public_key: str | None
    enforce_capability_filtering: bool = False
    catalogue_ttl_s: float = 60.0
    log_level: str = "INFO"

    @property
    def primary(self) -> Server:
        return self.servers[0]


def _listen(raw: Any, what: str) -> Listen:
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: expected a mapping with host and port")
    port = raw.get("port", 0)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{what}.port: expected a port number, got {port!r}")
    return Listen(host=str(raw.get("host", "127.0.0.1")), port=port)


def load_config(path: Path) -> GatewayConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    servers_raw = data.get("servers")
    if not isinstance(servers_raw, list) or not servers_raw:
        raise ConfigError(f"{path}: servers: list at least one MCP server {{name, url}}")
    servers: list[Server] = []
    for i, entry in enumerate(servers_raw):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("url"):
            raise ConfigError(f"{path}: servers[{i}] needs name and url")
        if entry.get("prefix"):
            raise ConfigError(
                f"{path}: servers[{i}].prefix: tool prefixes need a body rewrite, which this "
                'ext_authz stand-in cannot do; use prefix: ""'
            )
        servers.append(Server(name=str(entry["name"]), url=str(entry["url"])))
    key_pem: str | None = None
    key_file = data.get("trusted_header_public_key_file")
    if key_file:
        try:
            key_pem = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"trusted_header_public_key_file {key_file}: {exc.strerror or exc}"
            ) from None
    return GatewayConfig(
        router=_listen(data.get("router", {}), "router"),
        broker=_listen(data.get("broker", {}), "broker"),
        servers=tuple(servers),
        trusted_header_public_key=key_pem,
        enforce_capability_filtering=bool(data.get("enforce_capability_filtering", False)),
        catalogue_ttl_s=float(data.get("catalogue_ttl_s", 60.0)),
        log_level=str(data.get("log_level", "INFO")).upper(),
    )


def annotation_hints(annotations: Any) -> str:
    """``readOnly=true,destructive=false,idempotent=unspecified,openWorld=true`` (upstream order
    and spelling, ``request_handlers.go``); a missing or non-boolean hint is ``unspecified``."""
    source = annotations if isinstance(annotations, dict) else {}
    parts = []
    for short, key in HINT_KEYS:
        value = source.get(key)
        text = "unspecified" if not isinstance(value, bool) else ("true" if value else "false")
        parts.append(f"{short}={text}")
    return ",".join(parts)


@dataclass
class Catalogue:
    """Tool name → (server, annotations), learnt from the servers' real ``tools/list`` answers."""

    ttl_s: float = 60.0
    _tools: dict[str, tuple[str, dict[str, Any] | None]] = field(default_factory=dict)
    _learnt_at: dict[str, float] = field(default_factory=dict)

    def learn(self, server: str, tools: list[Any]) -> None:
        """Replace ``server``'s tools with this (unfiltered) ``tools/list`` result."""
        self._tools = {n: v for n, v in self._tools.items() if v[0] != server}
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                annotations = tool.get("annotations")
                self._tools[tool["name"]] = (
                    server,
                    annotations if isinstance(annotations, dict) else None,
                )
        self._learnt_at[server] = time.monotonic()

    def lookup(self, tool: str) -> tuple[str, dict[str, Any] | None] | None:
        return self._tools.get(tool)

    def fresh(self, server: str) -> bool:
        learnt = self._learnt_at.get(server)
        return learnt is not None and time.monotonic() - learnt < self.ttl_s

    def tools_of(self, server: str) -> set[str]:
        return {name for name, (srv, _) in self._tools.items() if srv == server}
