"""The local gateway's auth layer (:class:`AuthLayer`): our token exchange and policy as HTTP
ext_authz filters (:func:`plugin_auth`), or one gRPC ext_authz filter to Authorino
(:func:`authorino_auth`); every filter fails closed with :data:`AUTHZ_ERROR_STATUS`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.testbed.mcp_gateway.envoy_clusters import static_cluster

AUTHZ_ERROR_STATUS = 502  # an auth service that cannot be reached (never one of their answers)
_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)


@dataclass
class AuthLayer:
    """The auth step of the gateway: its HTTP filters, clusters and per-route settings."""

    filters: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    names: str  # for the 502 reason ("token exchange or policy")
    server_route: dict[str, Any] = field(default_factory=dict)  # per-filter config, server routes
    broker_route: dict[str, Any] = field(default_factory=dict)  # per-filter config, /mcp

    def disabled(self) -> dict[str, Any]:
        """Per-route config that turns every filter of this layer off."""
        return {f["name"]: {"@type": _EXT_AUTHZ_PER_ROUTE, "disabled": True} for f in self.filters}


def http_ext_authz(
    name: str,
    *,
    port: int,
    cluster: str,
    allowed_headers: Sequence[Mapping[str, str]],
    upstream_headers: Sequence[Mapping[str, str]],
    with_body: bool,
    headers_to_add: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """An HTTP ext_authz filter asking ``http://127.0.0.1:<port>/check<path>``; fails closed.

    ``headers_to_add`` are sent on every check request (e.g. a caller credential the check
    service requires).
    """
    service: dict[str, Any] = {
        "server_uri": {"uri": f"http://127.0.0.1:{port}", "cluster": cluster, "timeout": "10s"},
        "path_prefix": "/check",
        "authorization_response": {
            "allowed_upstream_headers": {"patterns": list(upstream_headers)},
            "allowed_client_headers": {
                "patterns": [{"exact": "www-authenticate"}, {"exact": "content-type"}]
            },
        },
    }
    if headers_to_add:
        service["authorization_request"] = {
            "headers_to_add": [{"key": h["key"], "value": h["value"]} for h in headers_to_add]
        }
    config: dict[str, Any] = {
        "@type": _EXT_AUTHZ,
        "transport_api_version": "V3",
        "stat_prefix": name.replace(".", "_"),
        "failure_mode_allow": False,
        "status_on_error": {"code": AUTHZ_ERROR_STATUS},
        "allowed_headers": {"patterns": list(allowed_headers)},
        "http_service": service,
    }
    if with_body:
        config["with_request_body"] = {"max_request_bytes": 1048576, "allow_partial_message": False}
    return {"name": name, "typed_config": config}


def plugin_auth(
    token_exchange_port: int,
    policy_port: int,
    *,
    check_headers: Sequence[Mapping[str, str]] = (),
) -> AuthLayer:
    """Our two services as HTTP ext_authz filters: token exchange, then policy."""
    mcp_headers = [{"prefix": "x-mcp-"}, {"exact": "mcp-session-id"}, {"exact": "x-request-id"}]
    return AuthLayer(
        filters=[
            http_ext_authz(
                "kmg.token_exchange",
                port=token_exchange_port,
                cluster="token_exchange",
                allowed_headers=[*mcp_headers, {"exact": "user-agent"}],
                upstream_headers=[{"exact": "authorization"}],
                with_body=False,
                headers_to_add=check_headers,
            ),
            http_ext_authz(
                "kmg.policy",
                port=policy_port,
                cluster="policy",
                allowed_headers=[*mcp_headers, {"exact": "content-type"}],
                upstream_headers=[{"exact": "x-mcp-authorized"}, {"exact": "x-authorized-tools"}],
                with_body=True,
                headers_to_add=check_headers,
            ),
        ],
        clusters=[
            static_cluster("token_exchange", token_exchange_port),
            static_cluster("policy", policy_port),
        ],
        names="router, token exchange or policy",
    )


def authorino_auth(grpc_port: int, *, server_authconfig: str, broker_authconfig: str) -> AuthLayer:
    """One gRPC ext_authz filter to Authorino; the AuthConfig is chosen per route by the check's
    context extension ``host``, as Kuadrant does (AuthConfig ``hosts`` = [its name])."""
    name = "kmg.authorino"

    def pick(host: str) -> dict[str, Any]:
        return {
            name: {
                "@type": _EXT_AUTHZ_PER_ROUTE,
                "check_settings": {"context_extensions": {"host": host}},
            }
        }

    return AuthLayer(
        filters=[
            {
                "name": name,
                "typed_config": {
                    "@type": _EXT_AUTHZ,
                    "transport_api_version": "V3",
                    "stat_prefix": "authorino",
                    "failure_mode_allow": False,
                    "status_on_error": {"code": AUTHZ_ERROR_STATUS},
                    "grpc_service": {"envoy_grpc": {"cluster_name": "authorino"}, "timeout": "10s"},
                },
            }
        ],
        clusters=[static_cluster("authorino", grpc_port, http2=True)],
        names="router or Authorino",
        server_route=pick(server_authconfig),
        broker_route=pick(broker_authconfig),
    )
