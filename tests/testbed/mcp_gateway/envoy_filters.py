"""The request-path filters of the local gateway before its auth layer: the Lua filter that drops
client-supplied routing headers (``strip_client_headers.lua``, a data file next to this module),
the real MCP router as ext_proc, and the Lua filter that names the server the router routed to."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.testbed.mcp_gateway.envoy_auth import AUTHZ_ERROR_STATUS, AuthLayer

ROUTER_FILTER = "kmg.mcp_router"
STRIP_FILTER = "kmg.strip_client_headers"
SERVER_NAME_FILTER = "kmg.server_name"
ROUTER_CLUSTER = "mcp_router"  # the broker/router replicas' ext_proc (gRPC) ports
STRIP_LUA = Path(__file__).with_name("strip_client_headers.lua")

_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
)
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"


def request_filters(server_names: Mapping[str, str]) -> list[dict[str, Any]]:
    """The filters before the auth layer, in order: strip, router, server name
    (``server_names``: server hostname -> its ``x-mcp-servername``)."""
    return [
        _lua(STRIP_FILTER, STRIP_LUA.read_text()),
        _router_filter(),
        _lua(SERVER_NAME_FILTER, _server_name_lua(server_names)),
    ]


def all_disabled(auth: AuthLayer) -> dict[str, Any]:
    """Per-route config that turns every filter off, these and the auth layer's."""
    return {
        STRIP_FILTER: {"@type": _LUA_PER_ROUTE, "disabled": True},
        ROUTER_FILTER: {"@type": _EXT_PROC_PER_ROUTE, "disabled": True},
        SERVER_NAME_FILTER: {"@type": _LUA_PER_ROUTE, "disabled": True},
        **auth.disabled(),
    }


def _server_name_lua(server_names: Mapping[str, str]) -> str:
    """Lua: x-mcp-servername from the :authority the router set (server hostnames only)."""
    entries = ", ".join(f'["{host}"] = "{name}"' for host, name in server_names.items())
    return (
        f"local servers = {{{entries}}}\n"
        "function envoy_on_request(handle)\n"
        '  local name = servers[handle:headers():get(":authority")]\n'
        "  if name ~= nil then\n"
        '    handle:headers():replace("x-mcp-servername", name)\n'
        "  end\n"
        "end\n"
    )


def _lua(name: str, code: str) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": {"@type": _LUA, "default_source_code": {"inline_string": code}},
    }


def _router_filter() -> dict[str, Any]:
    """The MCP router as the upstream EnvoyFilter inserts it (processing modes as upstream)."""
    return {
        "name": ROUTER_FILTER,
        "typed_config": {
            "@type": _EXT_PROC,
            "failure_mode_allow": False,
            "allow_mode_override": True,
            "mutation_rules": {"allow_all_routing": True},
            "message_timeout": "10s",
            "status_on_error": {"code": AUTHZ_ERROR_STATUS},
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "grpc_service": {"envoy_grpc": {"cluster_name": ROUTER_CLUSTER}},
        },
    }
