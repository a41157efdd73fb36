"""Envoy clusters of the local gateway: loopback endpoints, balanced round robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def static_cluster(name: str, port: int | Sequence[int], *, http2: bool = False) -> dict[str, Any]:
    """A cluster of loopback endpoints; several ports are balanced round robin (each request, or
    each ext_proc/gRPC stream, goes to the next endpoint)."""
    ports = [port] if isinstance(port, int) else list(port)
    if not ports:
        raise ValueError(f"cluster {name} needs at least one port")
    cluster: dict[str, Any] = {
        "name": name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": p}
                                }
                            }
                        }
                        for p in ports
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster
