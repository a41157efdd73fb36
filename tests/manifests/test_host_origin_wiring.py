"""Host and Origin checks (DNS rebinding protection) in the rendered deployments: whoever calls a
service does so under a Host that service's rendered config accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kmg_common.host_origin import HostOriginRule, service_rule
from mcp_backend.transport.host_origin_guard import host_origin_rule
from tests.manifests.rendered_objects import (
    Obj,
    load_backend,
    load_policy,
    load_token_exchange,
    service_url_target,
)
from tests.testbed import paths
from tests.testbed.mcp_gateway.stack import SERVER_PLANS

SERVICE_URL = re.compile(
    r"https?://[a-z0-9-]+\.[a-z0-9-]+\.svc(?:\.cluster\.local)?(?::\d+)?[^\s\"']*"
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def service_rules(objs: list[Obj], tmp_path: Path) -> dict[str, HostOriginRule]:
    """Each service's Host and Origin rule, from its rendered config by the real loaders."""
    rules: dict[str, HostOriginRule] = {}
    backend = load_backend(objs, tmp_path)
    rules["mcp-backend"] = host_origin_rule(backend)
    exchange = load_token_exchange(objs, tmp_path)
    rules["token-exchange"] = service_rule(exchange)
    policy = load_policy(objs, tmp_path)
    rules["policy"] = service_rule(policy)
    return rules


@pytest.mark.parametrize(
    "target", ["overlays/kuadrant", "overlays/istio-ext-authz", "overlays/kind"]
)
def test_every_caller_uses_a_host_its_service_accepts(
    rendered: dict[str, list[Obj]], tmp_path: Path, target: str
) -> None:
    """Whoever calls our services in a deployment (the MCP Gateway's router and broker, Authorino,
    one service calling another, clients of the public URL) does so under a Host that service
    accepts; a rebound name and a foreign Origin are refused by every one of them."""
    objs = rendered[target]
    rules = service_rules(objs, tmp_path)
    callers: dict[str, set[str]] = {name: set() for name in rules}
    mesh = yaml.safe_load(
        (paths.REPO_ROOT / "manifests/overlays/istio-ext-authz/mesh-config.yaml").read_text()
    )
    # Every in-cluster URL of our Services: AuthPolicies, Istio's provider, the services' configs.
    texts = [s for o in objs for s in _strings(o)] + _strings(mesh)
    for url in (m for t in texts for m in SERVICE_URL.findall(t)):
        if (urlsplit(url).hostname or "").split(".")[0] in callers:
            svc, port = service_url_target(objs, url)
            callers[svc["metadata"]["name"]].add(f"{urlsplit(url).hostname}:{port}")
    # The MCP Gateway: its router sets :authority to the HTTPRoute hostname when it routes a
    # tools/call to the backend; its broker calls the URL the controller builds from backendRef.
    for route in rendered["gateway"]:
        if route["kind"] != "HTTPRoute":
            continue
        for ref in (r for rule in route["spec"]["rules"] for r in rule["backendRefs"]):
            if ref["name"] == "mcp-backend":
                callers["mcp-backend"] |= set(route["spec"]["hostnames"])
                callers["mcp-backend"].add(
                    f"{ref['name']}.{ref['namespace']}.svc.cluster.local:{ref['port']}"
                )
    backend = load_backend(objs, tmp_path)
    assert backend.resource_url is not None
    public = urlsplit(backend.resource_url)
    callers["mcp-backend"].add(public.netloc)
    # The testbed's local gateway routes server A under the same hostname (its backend's
    # allowed_hosts come from there: tests/testbed/mcp_gateway/stack.py).
    assert SERVER_PLANS[0].hostname in callers["mcp-backend"]
    if target == "overlays/kind":  # make kind-demo: kubectl port-forward, Host 127.0.0.1:<port>
        demo = (paths.REPO_ROOT / "manifests/kind/demo.sh").read_text()
        for service, var in (("mcp-backend", "BE_PORT"), ("token-exchange", "TE_PORT")):
            port = re.search(rf"\b{var}=(\d+)", demo)
            assert port is not None, var
            callers[service].add(f"127.0.0.1:{port.group(1)}")
    if target == "overlays/kuadrant":  # Authorino calls /token and /v1/decide
        assert callers["token-exchange"]
        assert callers["policy"]
    for service, hosts in callers.items():
        rule = rules[service]
        for host in hosts:
            assert rule.refusal(host, None) is None, f"{service} refuses its caller's Host {host}"
        assert rule.refusal("evil.example", None) is not None, service
        assert rule.refusal("10.244.0.7:8080", None) is not None, f"{service}: any pod IP"
        assert rule.refusal(next(iter(hosts), "localhost"), "http://evil.example") is not None
    assert rules["mcp-backend"].origin_allowed(f"{public.scheme}://{public.netloc}")
