"""The auth wiring of the gateway overlays: the Kuadrant AuthPolicies fail closed (the only allow
path is our policy service's explicit ``allow == true``), only the exact metadata paths skip auth,
a denial reaches MCP clients as a JSON-RPC error, Istio uses one combined ext_authz provider, and
Authorino presents the policy's caller secret. MCPServerRegistration runs through the real
controller in ``gateway_controller/test_registration.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.manifests.rendered_objects import (
    GATEWAY_CLIENT,
    Obj,
    config_of,
    custom_authorization_policies,
    load_policy,
    load_token_exchange,
    service_url_target,
)
from tests.testbed import paths


def test_authpolicy_fails_closed(rendered: dict[str, list[Obj]]) -> None:
    """Authorino ignores failed metadata calls: the ONLY allow path must be an explicit
    ``allow == true`` from our policy service, fed by our token service."""
    objs = rendered["overlays/kuadrant"]
    policies = [o for o in objs if o["kind"] == "AuthPolicy"]
    assert {p["spec"]["targetRef"]["name"] for p in policies} == {"kubernetes-mcp", "mcp-route"}
    for policy in policies:
        rules = policy["spec"]["rules"]
        authn = rules["authentication"]
        assert set(authn) == {"keycloak"}, "no other (e.g. anonymous) identity source"
        assert set(authn["keycloak"]) == {"jwt"}
        authz = rules["authorization"]
        predicates = [
            p["predicate"] for a in authz.values() for p in a["patternMatching"]["patterns"]
        ]
        assert set().union(*(a.keys() for a in authz.values())) == {"patternMatching"}
        assert any(re.search(r"auth\.metadata\.policy\.allow == true\b", p) for p in predicates)
        assert not any("||" in p for p in predicates), "an OR could let a failure through"
        decide = rules["metadata"]["policy"]["http"]
        svc, _ = service_url_target(objs, decide["url"])
        assert svc["metadata"]["name"] == "policy"
        assert urlsplit(decide["url"]).path == "/v1/decide"
        assert decide["method"] == "POST"
        assert decide["contentType"] == "application/json"
        assert {"token", "server", "method"} <= set(decide["bodyParameters"])
        assert rules["response"]["unauthorized"]["code"] == 403
        assert rules["response"]["unauthenticated"]["code"] == 401
    backend = next(p for p in policies if p["spec"]["targetRef"]["name"] == "kubernetes-mcp")
    rules = backend["spec"]["rules"]
    exchange = rules["metadata"]["exchange"]
    svc, _ = service_url_target(objs, exchange["http"]["url"])
    assert svc["metadata"]["name"] == "token-exchange"
    assert urlsplit(exchange["http"]["url"]).path == "/token"
    body = exchange["http"]["bodyParameters"]
    assert body["grant_type"]["value"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert body["audience"]["expression"] == "request.headers['x-mcp-servername']"
    # the exchange runs before the decision that consumes its token
    assert exchange["priority"] < rules["metadata"]["policy"]["priority"]
    assert (
        "auth.metadata.exchange.access_token"
        in rules["metadata"]["policy"]["http"]["bodyParameters"]["token"]["expression"]
    )
    header = rules["response"]["success"]["headers"]["authorization"]["plain"]["expression"]
    assert header == '"Bearer " + auth.metadata.exchange.access_token'
    broker = next(p for p in policies if p["spec"]["targetRef"]["name"] == "mcp-route")
    for name in ("x-mcp-authorized", "x-authorized-tools"):  # current and older broker
        signed = broker["spec"]["rules"]["response"]["success"]["headers"][name]
        assert signed["plain"]["expression"] == f"auth.metadata.policy.headers['{name}']"
        assert "tools/list" in signed["when"][0]["predicate"]
    # prompts/list is filtered by the current form too (its claim carries the prompts)
    current = broker["spec"]["rules"]["response"]["success"]["headers"]["x-mcp-authorized"]
    assert "prompts/list" in current["when"][0]["predicate"]


METADATA_PATHS = {
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
}


def test_only_the_exact_metadata_paths_skip_auth(rendered: dict[str, list[Obj]]) -> None:
    """Found in review: a path prefix or ``startsWith('/.well-known/')`` made any path below the
    metadata documents public, and ``/.well-known/oauth-protected-resource/../../mcp`` climbed
    out of it. Every route and auth rule matches exact paths; the gateway normalizes first."""
    routes = [o for o in rendered["gateway"] if o["kind"] == "HTTPRoute"]
    assert routes
    for route in routes:
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                assert match["path"] == {"type": "Exact", "value": "/mcp"}, route["metadata"]
    broker = next(
        o
        for o in rendered["overlays/kuadrant"]
        if o["kind"] == "AuthPolicy" and o["spec"]["targetRef"]["name"] == "mcp-route"
    )
    (when,) = broker["spec"]["when"]
    predicate = when["predicate"]
    assert "startsWith" not in predicate
    assert "request.url_path in" in predicate
    listed = set(re.findall(r"'([^']+)'", predicate))
    assert listed == METADATA_PATHS
    for obj in rendered["overlays/kuadrant"]:
        assert "startsWith('/.well-known" not in json.dumps(obj)
    (policy,) = custom_authorization_policies(rendered["overlays/istio-ext-authz"])
    (rule,) = policy["spec"]["rules"]
    (to,) = rule["to"]
    assert set(to["operation"]) == {"notPaths"}, "auth applies to every path but the two"
    assert set(to["operation"]["notPaths"]) == METADATA_PATHS


def test_backend_authpolicy_denial_is_a_json_rpc_error(rendered: dict[str, list[Obj]]) -> None:
    """A denied tools/call reaches MCP clients as a JSON-RPC error carrying the policy's reason
    (run through the real Authorino by tests/e2e/test_authorino.py)."""
    backend = next(
        o
        for o in rendered["overlays/kuadrant"]
        if o["kind"] == "AuthPolicy" and o["spec"]["targetRef"]["name"] == "kubernetes-mcp"
    )
    denied = backend["spec"]["rules"]["response"]["unauthorized"]
    assert denied["headers"]["content-type"]["value"] == "application/json"
    body = denied["body"]["expression"]
    assert body.startswith("""'{"jsonrpc":"2.0","id":null,"error":{"code":-32003,""")
    assert "auth.metadata.policy.reason" in body
    decide = backend["spec"]["rules"]["metadata"]["policy"]["http"]["bodyParameters"]
    assert "x-mcp-promptname" in decide["prompt"]["expression"]


def test_istio_uses_one_combined_provider(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    objs = rendered["overlays/istio-ext-authz"]
    folder = paths.REPO_ROOT / "manifests" / "overlays" / "istio-ext-authz"
    mesh = yaml.safe_load((folder / "mesh-config.yaml").read_text())
    (provider,) = mesh["meshConfig"]["extensionProviders"]
    policies = custom_authorization_policies(objs)
    assert len(policies) == 1, "one CUSTOM provider per gateway workload (Istio < 1.30)"
    (policy,) = policies
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    assert policy["spec"]["rules"], "a CUSTOM policy without rules never applies"
    assert policy["spec"]["targetRefs"][0]["kind"] == "Gateway"
    http = provider["envoyExtAuthzHttp"]
    svc, _ = service_url_target(objs, f"http://{http['service']}:{http['port']}")
    assert svc["metadata"]["name"] == "token-exchange"
    assert http["pathPrefix"] == "/ext-authz/combined"
    assert http["failOpen"] is False
    assert {"authorization", "x-mcp-servername", "x-mcp-toolname"} <= set(
        http["includeRequestHeadersInCheck"]
    )
    assert {"authorization", "x-mcp-authorized"} <= set(http["headersToUpstreamOnAllow"])
    # the overlay's token-exchange config is the base one plus where the policy service is
    base = config_of(rendered["base"], "token-exchange")
    overlay = config_of(objs, "token-exchange")
    settings = load_token_exchange(objs, tmp_path)
    policy_url = settings.ext_authz.policy_url
    assert policy_url is not None
    ext_authz = {k: v for k, v in overlay["ext_authz"].items() if k != "policy_url"}
    assert {**overlay, "ext_authz": ext_authz} == base, "istio overlay config drifted from base"
    svc, _ = service_url_target(objs, policy_url)
    assert svc["metadata"]["name"] == "policy"
    assert urlsplit(policy_url).path == "/check"


def test_kuadrant_overlay_presents_the_caller_secret_and_checks_the_audience(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """Authorino calls /v1/decide with the policy's caller secret (a Secret in its namespace,
    in the header the policy reads) and requires the caller's token to be for the gateway: a
    token exchanged for a server is not replayable through either route (run for real by
    tests/e2e/test_authorino.py)."""
    (tmp_path / "p").mkdir()
    policy_settings = load_policy(rendered["base"], tmp_path / "p")
    policies = [o for o in rendered["overlays/kuadrant"] if o["kind"] == "AuthPolicy"]
    assert len(policies) == 2
    for policy in policies:
        rules = policy["spec"]["rules"]
        decide = rules["metadata"]["policy"]["http"]
        assert decide["sharedSecretRef"] == {"name": "kmg-policy-caller", "key": "secret"}
        assert decide["credentials"] == {
            "customHeader": {"name": policy_settings.caller_auth.header}
        }
        (audience,) = rules["authorization"]["gateway-audience"]["patternMatching"]["patterns"]
        assert audience["predicate"].startswith("has(auth.identity.aud) && ")
        assert f"'{GATEWAY_CLIENT}' in auth.identity.aud" in audience["predicate"]
