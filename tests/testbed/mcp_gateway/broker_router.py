"""The real MCP Gateway broker/router (``mcp-broker-router`` of ``github.com/Kuadrant/mcp-gateway``
v0.9.0, built by ``make testbed``) run without Kubernetes: its servers config is a YAML file.

One process serves both parts, on 127.0.0.1 only:

* the router: Envoy's ext_proc filter (gRPC, ``--mcp-router-address``);
* the broker: the gateway's ``/mcp`` behind Envoy (``--mcp-broker-public-address``): sessions
  (``Mcp-Session-Id``, a JWT signed with ``GATEWAY_SIGNING_KEY``), the aggregated and prefixed
  ``tools/list`` / ``prompts/list`` of every server, filtered by the signed ``x-mcp-authorized``
  header (``--enforce-capability-filtering``: no valid header, nothing listed), RFC 9728 metadata
  from the ``OAUTH_*`` variables;
* metrics on their own port (``--metrics-addr``).

The broker reaches each server directly at its ``url`` for discovery (``tools/list``,
``prompts/list``), sending the server's ``credential`` as ``Authorization``; the router sends
calls through Envoy with the server's ``hostname`` as ``:authority``, and the hairpin
``initialize`` of each (gateway session, server) to ``--mcp-gateway-private-host`` (Envoy).

Several replicas and the session store (read in the v0.9.0 sources, paths under the module's
``internal/`` unless said otherwise):

* ``cmd/mcp-broker-router/main.go`` ``parseFlags`` / ``setupSessionInfra``:
  ``--cache-connection-string`` (env ``CACHE_CONNECTION_STRING``), parsed by go-redis'
  ``redis.ParseURL`` (``redis://[user]:[password]@host:port/db``, ``rediss://`` for TLS); the
  process PINGs it at start and panics when it cannot (no fallback). Unset: in-memory
  (``session.NewCache`` without a client). The same client backs the session cache, the
  elicitation id map (``idmap``, keys ``elicitation:<uuid>``) and the token-elicitation map
  (``elicitation``, ``tokenelicitation:<uuid>``).
* ``session/cache.go`` ``Cache``: one Redis hash per gateway session, **keyed by the session's
  JWT itself**, field = server name, value = that server's upstream ``Mcp-Session-Id`` (empty for
  a stateless server), TTL = the JWT's remaining lifetime (``AddSession``); fields
  ``token:<server>`` (per-user credentials of URL elicitation, AES-GCM with a key derived from
  ``GATEWAY_SIGNING_KEY``); key ``clientelicitation:<jwt>``. Only the user tokens are encrypted.
* ``routing/router_202511.go`` ``routeToUpstream`` / ``initializeMCPServerSession``: on a
  ``tools/call`` / ``prompts/get`` the router reads the hash; a server missing from it gets a
  hairpin ``initialize`` (singleflight per process only), whose session id is then stored. A
  Redis error there answers 500 "internal error" (no fallback to memory).
* ``session/jwt.go`` ``JWTManager``: the gateway session id is an HS256 JWT signed with
  ``GATEWAY_SIGNING_KEY`` and validated without any store, so every replica with the same key
  accepts every replica's sessions, with or without Redis. ``Terminate`` (DELETE, the broker's
  30 min idle timeout) deletes the hash but cannot revoke the JWT.
* ``broker/session_resurrection.go`` ``SessionResurrectionHandler``: the broker's ``/mcp`` (the
  go-sdk streamable handler keeps a pod-local table) re-creates a session it has never seen when
  its JWT is valid, so ``tools/list`` / ``prompts/list`` work on any replica, Redis or not.
* Per-process only, never shared: the ``select_tools`` scope (``broker/discovery_scope.go``), the
  per-user upstream sessions of ``userSpecificList`` servers (``broker.go`` ``userSessionPool``),
  the router's open hairpin client handles, a broker's GET notification stream.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, leak_scan
from tests.testbed.mcp_gateway.envoy_config import GatewayServer

BINARY = "mcp-broker-router"
SESSION_STORE_ENV = "CACHE_CONNECTION_STRING"  # = --cache-connection-string


@dataclass(frozen=True)
class BrokerRouterPorts:
    router: int  # gRPC ext_proc
    broker: int  # HTTP, behind Envoy
    metrics: int


def servers_config(servers: Sequence[GatewayServer], credential: str) -> dict[str, Any]:
    """The broker's ``--mcp-gateway-config`` document (what the controller writes in a cluster)."""
    return {
        "servers": [
            {
                "name": server.name,
                "url": f"http://127.0.0.1:{server.backend_port}{server.path}",
                "hostname": server.hostname,
                "prefix": server.prefix,
                "credential": credential,
            }
            for server in servers
        ]
    }


SERVERS_FILE = "mcp-gateway-servers.yaml"


def write_config(
    directory: Path, servers: Sequence[GatewayServer], secrets_dir: Path, *, credential: str
) -> tuple[Path, str]:
    """The servers file (0600: it holds the discovery ``credential``, ``Bearer <token>``, which
    the backends accept for listing only) and the signing key."""
    signing_key = secrets.token_urlsafe(48)
    leak_scan.register_secret(signing_key, "GATEWAY_SIGNING_KEY of the local gateway")
    path = directory / SERVERS_FILE
    path.write_text(yaml.safe_dump(servers_config(servers, credential), sort_keys=False))
    path.chmod(0o600)
    key_file = secrets_dir / "gateway-signing.key"
    key_file.write_text(signing_key + "\n")
    key_file.chmod(0o600)
    return path, signing_key


def argv(
    config: Path, ports: BrokerRouterPorts, *, public_host: str, private_host: str
) -> list[str]:
    return [
        str(build.binary(BINARY)),
        "--mcp-gateway-config",
        str(config),
        "--mcp-gateway-public-host",
        public_host,
        "--mcp-gateway-private-host",
        private_host,
        "--mcp-broker-public-address",
        f"127.0.0.1:{ports.broker}",
        "--mcp-router-address",
        f"127.0.0.1:{ports.router}",
        "--metrics-addr",
        f"127.0.0.1:{ports.metrics}",
        "--enforce-capability-filtering",
        "--log-format",
        "json",
    ]


def environment(
    *,
    signing_key: str,
    trusted_header_key_pem: str,
    resource: str,
    issuer: str,
    session_store: str | None = None,
) -> dict[str, str]:
    """The process environment. ``session_store``: a Redis URL with its password, given as
    ``CACHE_CONNECTION_STRING`` (as the controller does, from a Secret), never on the command
    line."""
    env = {
        "GATEWAY_SIGNING_KEY": signing_key,
        "TRUSTED_HEADER_PUBLIC_KEY": trusted_header_key_pem,
        "OAUTH_RESOURCE_NAME": "Kubernetes MCP (kube-mcp-gateway local gateway)",
        "OAUTH_RESOURCE": resource,
        "OAUTH_AUTHORIZATION_SERVERS": issuer,
        "OAUTH_BEARER_METHODS_SUPPORTED": "header",
        "OAUTH_SCOPES_SUPPORTED": "openid",
    }
    if session_store:
        env[SESSION_STORE_ENV] = session_store
    return env


def status(broker_port: int) -> dict[str, Any]:
    """The broker's ``/status`` (servers, readiness, tool and prompt counts)."""
    url = f"http://127.0.0.1:{broker_port}/status"
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def servers_ready(broker_port: int, expected: int) -> bool:
    """Every configured server connected and its tools and prompts listed (the broker's own
    status). Our backends always serve a prompt; the broker may list a server's tools on its
    first discovery event and its prompts only on the next timer, and until then a
    ``prompts/get`` routed to that replica is "Prompt not found"."""
    try:
        servers = status(broker_port).get("servers") or []
    except (OSError, ValueError, urllib.error.URLError):
        return False
    ready = [
        s
        for s in servers
        if s.get("ready") and s.get("totalTools", 0) > 0 and s.get("totalPrompts", 0) > 0
    ]
    return len(ready) == expected


CONFIG_RELOADED = "notifying observers of config change"


def refresh_routing_tables(servers_file: Path, logs: Sequence[Path], timeout: float = 30.0) -> None:
    """Make every replica rebuild its routing table once all its servers are ready.

    v0.9.0 rebuilds the router's table (``internal/broker/routing_table.go``) from each
    server manager's tool or prompt change under a *read* lock, and stores the snapshot last
    built: two servers discovered at once can store a table that misses the other's prompts
    (a lost update), and the table then stays so until the next change, every ``prompts/get``
    of it answered "Prompt not found" by that replica. A config reload rebuilds it under the
    write lock (``OnConfigChange`` → ``startManagers`` → ``refreshRoutingTable``): rewriting
    the servers file unchanged makes each replica reload it (viper watches the file), after
    which the tables hold every ready server's tools and prompts. Waits for each replica's log
    line, then a moment for the reload goroutine it announces."""
    seen = [_count(log, CONFIG_RELOADED) for log in logs]
    servers_file.write_bytes(servers_file.read_bytes())
    deadline = time.monotonic() + timeout
    for log, before in zip(logs, seen, strict=True):
        while _count(log, CONFIG_RELOADED) <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{log.name}: no config reload within {timeout:.0f}s")
            time.sleep(0.05)
    time.sleep(0.5)  # OnConfigChange runs in a goroutine started after that line


def _count(log: Path, line: str) -> int:
    try:
        return log.read_text(errors="replace").count(line)
    except FileNotFoundError:
        return 0
