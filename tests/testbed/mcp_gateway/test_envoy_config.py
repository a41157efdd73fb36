"""The local gateway's Envoy configuration as data: the real Envoy accepts it (``--mode validate``)
with either auth layer, and its security-relevant parts are where they must be. The behaviour
behind it is tested end to end in ``tests/e2e/test_gateway.py`` and ``test_gateway_paths.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed.envoy_proxy import envoy_binary
from tests.testbed.mcp_gateway import envoy_auth, envoy_config, envoy_filters
from tests.testbed.mcp_gateway.envoy_config import GatewayServer

SERVERS = [
    GatewayServer("mcp-test/kubernetes-mcp", "a_", "kubernetes-mcp.mcp.local", 10001),
    GatewayServer("mcp-test/kubernetes-mcp-b", "b_", "kubernetes-mcp-b.mcp.local", 10002),
]
LAYERS = {
    "plugins": lambda: envoy_auth.plugin_auth(
        10010, 10011, check_headers=[{"key": "x-kmg-caller", "value": "envoy-gateway"}]
    ),
    "authorino": lambda: envoy_auth.authorino_auth(
        10012, server_authconfig="backend-route", broker_authconfig="broker-route"
    ),
}


def _bootstrap(layer: str, replicas: int = 1) -> dict[str, Any]:
    return envoy_config.bootstrap(
        listen_port=10000,
        admin_port=10003,
        router_ports=[10004 + 10 * i for i in range(replicas)],
        broker_ports=[10005 + 10 * i for i in range(replicas)],
        servers=SERVERS,
        auth=LAYERS[layer](),
    )


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_envoy_accepts_the_configuration(layer: str, replicas: int, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config.render(_bootstrap(layer, replicas)))
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "--config-path", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "configuration" in done.stdout + done.stderr  # "configuration '...' OK"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_filter_order_and_routes(layer: str) -> None:
    hcm = _hcm(_bootstrap(layer))
    names = [f["name"] for f in hcm["http_filters"]]
    # Client headers dropped first, then the router, then the server name, then auth, then route.
    assert names[:3] == [
        envoy_filters.STRIP_FILTER,
        envoy_filters.ROUTER_FILTER,
        envoy_filters.SERVER_NAME_FILTER,
    ]
    assert names[-1] == "envoy.filters.http.router"
    assert all(
        f["typed_config"].get("failure_mode_allow") is False
        for f in hcm["http_filters"]
        if "ext_" in f["typed_config"]["@type"]
    )
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    hosts = {vh["name"]: vh for vh in hcm["route_config"]["virtual_hosts"]}
    gateway = hosts["gateway"]
    assert gateway["domains"] == ["*"]
    public = [r for r in gateway["routes"] if "path" in r["match"] and "route" in r]
    assert {r["match"]["path"] for r in public} == {*envoy_config.METADATA_PATHS, "/mcp"}
    # No prefix match reaches the broker or a server: only the 404 catch-all is a prefix.
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            if "prefix" in route["match"]:
                assert route["direct_response"]["status"] == 404
        assert "safe_regex" in vh["routes"][0]["match"], "escaped slashes refused first"
    for server in SERVERS:
        (vh,) = [v for v in hosts.values() if v["domains"] == [server.hostname]]
        routed = [r for r in vh["routes"] if "route" in r]
        assert [(r["match"], r["route"]["cluster"]) for r in routed] == [
            ({"path": "/mcp"}, server.cluster)
        ]


def test_the_server_name_comes_from_the_authority_the_router_set() -> None:
    hcm = _hcm(_bootstrap("plugins"))
    (lua,) = [f for f in hcm["http_filters"] if f["name"] == envoy_filters.SERVER_NAME_FILTER]
    code = lua["typed_config"]["default_source_code"]["inline_string"]
    for server in SERVERS:
        assert f'["{server.hostname}"] = "{server.name}"' in code


def test_check_requests_carry_the_configured_headers() -> None:
    hcm = _hcm(_bootstrap("plugins"))
    checks = [f for f in hcm["http_filters"] if f["name"] in ("kmg.token_exchange", "kmg.policy")]
    assert len(checks) == 2
    for check in checks:
        service = check["typed_config"]["http_service"]
        assert service["authorization_request"]["headers_to_add"] == [
            {"key": "x-kmg-caller", "value": "envoy-gateway"}
        ]
    rendered = yaml.safe_load(envoy_config.render(_bootstrap("plugins")))
    assert rendered == _bootstrap("plugins")


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _ports(cluster: dict[str, Any]) -> list[int]:
    (group,) = cluster["load_assignment"]["endpoints"]
    return [e["endpoint"]["address"]["socket_address"]["port_value"] for e in group["lb_endpoints"]]


def _broker_route(config: dict[str, Any]) -> dict[str, Any]:
    hosts = {vh["name"]: vh for vh in _hcm(config)["route_config"]["virtual_hosts"]}
    (route,) = [r for r in hosts["gateway"]["routes"] if r["match"] == {"path": "/mcp"}]
    return route


def test_broker_replicas_are_balanced_round_robin_for_ext_proc_and_the_broker() -> None:
    """Two replicas: the router's ext_proc cluster (HTTP/2) and the broker's cluster each hold
    both replicas' ports, round robin; the broker's answers name the replica that served them.
    One replica: one endpoint each, no such header (the single-replica gateway as before)."""
    two, one = _bootstrap("plugins", 2), _bootstrap("plugins", 1)
    for config, count in ((two, 2), (one, 1)):
        clusters = _clusters(config)
        router = clusters[envoy_filters.ROUTER_CLUSTER]
        broker = clusters[envoy_config.BROKER_CLUSTER]
        assert _ports(router) == [10004 + 10 * i for i in range(count)]
        assert _ports(broker) == [10005 + 10 * i for i in range(count)]
        assert router["lb_policy"] == broker["lb_policy"] == "ROUND_ROBIN"
        assert "explicit_http_config" in str(router["typed_extension_protocol_options"])
    (added,) = _broker_route(two)["response_headers_to_add"]
    assert added["header"] == {
        "key": envoy_config.BROKER_REPLICA_HEADER,
        "value": "%UPSTREAM_REMOTE_ADDRESS%",
    }
    assert "response_headers_to_add" not in _broker_route(one)
