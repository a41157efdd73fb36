"""The local gateway's Envoy configuration, assembled as data (dumped to YAML for Envoy).

The request path of every MCP request, filters in order (as the MCP Gateway's Istio/Envoy setup
runs them, ``config/istio/envoyfilter.yaml`` of the upstream sources: its ext_proc first):

1. ``kmg.strip_client_headers`` (Lua): drop every client-supplied ``x-mcp-*`` and
   ``x-authorized-tools`` header, so a client can forge neither the routing headers nor the
   signed tool list (the real router re-injects the client's own ``x-mcp-authorized`` on broker
   requests; without this step a forged one would reach the broker).
2. ``kmg.mcp_router`` (ext_proc, gRPC): the real MCP Gateway router. Header phase: ``:authority``
   set to the gateway's public host (the broker cannot be bypassed); body phase (BUFFERED):
   ``x-mcp-method`` / ``-servername`` / ``-toolname`` / ``-promptname`` / ``-annotation-hints``,
   the tool prefix stripped from the body, ``:authority`` set to the server's ``hostname`` for
   ``tools/call`` and ``prompts/get``, and the hairpin ``initialize`` it sends back through this
   gateway routed to the server it names.
3. ``kmg.server_name`` (Lua): a request the router routed to a server's hostname carries that
   server's ``x-mcp-servername`` (the router sets it on calls; its hairpin ``initialize`` brings
   it as a client header, which step 1 dropped).
4. The auth layer (:class:`AuthLayer`): our token exchange and policy as HTTP ext_authz filters,
   or one gRPC ext_authz filter to Authorino.
5. Routes, by ``:authority`` as the router left it: each server's hostname → that server's
   backend (exact path), any other host → the broker for ``/mcp`` and the two RFC 9728 metadata
   paths (exact, public), 404 for everything else.

Paths are normalized before any filter or route sees them (RFC 3986 dot segments, ``%2e``,
merged slashes), and a path with an escaped slash (``%2F``, ``%5C``) is refused with 400 by the
first route of every virtual host: the metadata routes match exact paths only, so
``/.well-known/oauth-protected-resource/../../mcp`` is ``/mcp`` with every auth step. (Envoy's own
``path_with_escaped_slashes_action: REJECT_REQUEST`` refuses too, but its refusal then passes the
router's response phase, which has seen no request and turns it into a 500 "internal error"; a
route with every filter off answers a clear 400 instead.)

The router and every auth filter fail closed (``failure_mode_allow: false``); an unreachable one
makes Envoy answer 502 with a JSON reason (``status_on_error`` + the local reply mapper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tests.testbed.mcp_gateway import envoy_filters as filters
from tests.testbed.mcp_gateway.envoy_auth import AUTHZ_ERROR_STATUS, AuthLayer
from tests.testbed.mcp_gateway.envoy_clusters import static_cluster

METADATA_PATHS = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
)
MCP_PATH = "/mcp"
BROKER_CLUSTER = "mcp_broker"  # the broker/router replicas' HTTP ports (/mcp, metadata)
# With several broker replicas: the answer of the broker's /mcp route names the replica that
# served it (its loopback address), so tests can tell replicas apart request by request.
BROKER_REPLICA_HEADER = "x-kmg-broker-replica"
UNAVAILABLE_BODY = (
    '{"allow":false,"error":"authorization_unavailable","reason":"an authorization service of '
    'the gateway (%s) cannot be reached; the gateway fails closed. Retry shortly."}'
)
MAX_REQUEST_HEADERS_KB = 96
ROUTE_TIMEOUT = "310s"  # helm install/upgrade may take helm_timeout_s (300 s)
# A path with an escaped slash or backslash anywhere (routes match the path without the query).
ESCAPED_SLASH = ".*%(?i:2f|5c).*"

_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


@dataclass(frozen=True)
class GatewayServer:
    """One MCP server behind the gateway, as the broker's config and Envoy's routes see it."""

    name: str  # x-mcp-servername, key of the signed lists; = its Keycloak client id
    prefix: str  # tool and prompt prefix in the aggregated lists
    hostname: str  # the :authority the router sends its calls with (an Envoy virtual host)
    backend_port: int
    path: str = MCP_PATH

    @property
    def cluster(self) -> str:
        return "server_" + "".join(c if c.isalnum() else "_" for c in self.name)

    def tool(self, name: str) -> str:
        """The name a client sees for this server's tool (or prompt) ``name``."""
        return self.prefix + name


TRACE_CLUSTER = "otel_collector"  # the OTLP/gRPC collector Envoy's spans go to
TRACE_SERVICE_NAME = "mcp-gateway-envoy"
_OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def tracing(collector_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Envoy's OpenTelemetry tracer: the connection manager's ``tracing`` block (every request
    sampled; a sampled ``traceparent`` from the client is continued) and the collector's cluster.
    Envoy then starts a span per request, a child span per ext_authz check, and passes
    ``traceparent`` to the check services and the upstream."""
    block = {
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _OTEL_TRACER,
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACE_CLUSTER}, "timeout": "2s"},
                "service_name": TRACE_SERVICE_NAME,
            },
        },
    }
    return block, static_cluster(TRACE_CLUSTER, collector_port, http2=True)


def _replica_header(broker_ports: Sequence[int]) -> dict[str, Any]:
    """Several broker replicas: :data:`BROKER_REPLICA_HEADER` on the broker's answers (one: none,
    the single-replica gateway stays as it was)."""
    if len(broker_ports) < 2:
        return {}
    header = {"key": BROKER_REPLICA_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"}
    return {
        "response_headers_to_add": [
            {"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ]
    }


def bootstrap(
    *,
    listen_port: int,
    admin_port: int,
    router_ports: Sequence[int],
    broker_ports: Sequence[int],
    servers: Sequence[GatewayServer],
    auth: AuthLayer,
    trace_collector_port: int | None = None,
) -> dict[str, Any]:
    """The whole Envoy bootstrap of the local gateway. ``router_ports`` / ``broker_ports``: one
    entry per broker/router replica (the ext_proc cluster and the broker's cluster balance round
    robin over them). ``trace_collector_port``: an OTLP/gRPC collector for Envoy's spans
    (:func:`tracing`); None: no tracing."""
    no_filters = filters.all_disabled(auth)
    escaped_slash = {
        "match": {"safe_regex": {"regex": ESCAPED_SLASH}},
        "direct_response": {
            "status": 400,
            "body": {
                "inline_string": '{"error":"bad_request","reason":"escaped slashes (%2F, %5C) '
                'are not accepted in the path"}\n'
            },
        },
        "typed_per_filter_config": no_filters,
    }
    not_found = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 404,
            "body": {
                "inline_string": '{"error":"not_found","reason":"the MCP endpoint of this '
                'gateway is /mcp"}\n'
            },
        },
        "typed_per_filter_config": no_filters,
    }
    server_hosts = [
        {
            "name": f"server_{i}",
            "domains": [server.hostname],
            "routes": [
                escaped_slash,
                {
                    "match": {"path": server.path},
                    "route": {"cluster": server.cluster, "timeout": ROUTE_TIMEOUT},
                    "typed_per_filter_config": dict(auth.server_route),
                },
                not_found,
            ],
        }
        for i, server in enumerate(servers)
    ]
    gateway_host = {
        "name": "gateway",
        "domains": ["*"],
        "routes": [
            escaped_slash,
            *(
                {
                    # RFC 9728 metadata: public (clients read it after a 401); exact paths only.
                    "match": {"path": path},
                    "route": {"cluster": BROKER_CLUSTER, "timeout": "10s"},
                    "typed_per_filter_config": no_filters,
                }
                for path in METADATA_PATHS
            ),
            {
                "match": {"path": MCP_PATH},
                "route": {"cluster": BROKER_CLUSTER, "timeout": ROUTE_TIMEOUT},
                "typed_per_filter_config": dict(auth.broker_route),
                **_replica_header(broker_ports),
            },
            not_found,
        ],
    }
    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "mcp_gateway",
        "stream_idle_timeout": "300s",
        # Above Envoy's default 60 KiB, so that an oversized bearer token reaches the token check
        # and gets its 401: a request Envoy refuses itself (431) also passes the router's response
        # phase, which has seen no request, and the client gets an empty reply instead.
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",  # refused by a route, see above
        # A check service or the router that cannot be reached: status_on_error 502, and a JSON
        # reason instead of an empty body. (Only local replies are mapped; an upstream's own 502
        # passes unchanged. Envoy's router answers unreachable upstreams with 503.)
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {
                                    "default_value": AUTHZ_ERROR_STATUS,
                                    "runtime_key": "kmg.authz_error_status",
                                },
                            }
                        }
                    },
                    "body": {"inline_string": UNAVAILABLE_BODY % auth.names},
                    "body_format_override": {
                        "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%\n"},
                        "content_type": "application/json",
                    },
                }
            ]
        },
        "route_config": {"name": "mcp", "virtual_hosts": [*server_hosts, gateway_host]},
        "http_filters": [
            *filters.request_filters({s.hostname: s.name for s in servers}),
            *auth.filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    extra_clusters: list[dict[str, Any]] = []
    if trace_collector_port is not None:
        hcm["tracing"], trace_cluster = tracing(trace_collector_port)
        extra_clusters.append(trace_cluster)
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "mcp_gateway",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                static_cluster(filters.ROUTER_CLUSTER, router_ports, http2=True),
                static_cluster(BROKER_CLUSTER, broker_ports),
                *(static_cluster(s.cluster, s.backend_port) for s in servers),
                *auth.clusters,
                *extra_clusters,
            ],
        },
    }


def render(config: Mapping[str, Any]) -> str:
    """YAML for Envoy's ``--config-path`` (a ``$`` stays literal: no template substitution)."""
    return "# Generated by tests/testbed/mcp_gateway/envoy_config.py\n" + yaml.safe_dump(
        dict(config), sort_keys=False, width=120
    )
