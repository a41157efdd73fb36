"""Issue 14, who may reach and ask each service: default-deny NetworkPolicies admitting only the
gateway path, STRICT mTLS with per-service principals in the Istio overlay, services that demand
the gateway's caller secret and tokens bound to them, and consistent demo credentials.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from tests.manifests import render
from tests.manifests.rendered_objects import (
    GATEWAY_CLIENT,
    SERVICE_NAMESPACE,
    SERVICES,
    Obj,
    deployments,
    find,
    generated,
    load_backend,
    load_policy,
    load_token_exchange,
    mount_for,
)
from tests.testbed import paths
from tests.testbed.identity_plan import BACKEND_AUDIENCE

# The callers of a default install (the Kind Gateway; the MCP Gateway controller's broker
# Deployment, checked against the real controller in gateway_controller/).
GATEWAY_PODS = ("gateway-system", {"gateway.networking.k8s.io/gateway-name": "mcp-gateway"})
BROKER_PODS = ("mcp-system", {"app.kubernetes.io/name": "mcp-gateway"})
AUTHORINO_NAMESPACE = "kuadrant-system"
GATEWAY_PRINCIPAL = "cluster.local/ns/gateway-system/sa/mcp-gateway-istio"
BROKER_PRINCIPAL = "cluster.local/ns/mcp-system/sa/mcp-gateway"


def _peers(policy: Obj) -> set[tuple[str | None, tuple[tuple[str, str], ...]]]:
    """(namespace or None = the policy's own, pod labels) of every ``from`` peer."""
    out: set[tuple[str | None, tuple[tuple[str, str], ...]]] = set()
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"], policy["metadata"]["name"]
        for peer in rule["from"]:
            assert set(peer) <= {"namespaceSelector", "podSelector"}, peer
            ns = peer.get("namespaceSelector")
            namespace = ns["matchLabels"]["kubernetes.io/metadata.name"] if ns else None
            pods = (peer.get("podSelector") or {}).get("matchLabels", {})
            out.add((namespace, tuple(sorted(pods.items()))))
    return out


def test_network_policies_admit_only_the_gateway_path(rendered: dict[str, list[Obj]]) -> None:
    """Issue 14: any pod could call the backend's /mcp, the policy's /check and the token
    exchange's /check directly. Default deny in kmg-system; each service admits only its callers;
    the pod selectors are the labels the rendered Deployments really carry."""
    objs = rendered["base"]
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies.pop("default-deny-ingress")
    assert deny["metadata"]["namespace"] == SERVICE_NAMESPACE
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pod_labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in deployments(objs)
    }
    by_service: dict[str, Obj] = {}
    for policy in policies.values():
        assert policy["metadata"]["namespace"] == SERVICE_NAMESPACE
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        selected = [n for n, labels in pod_labels.items() if selector.items() <= labels.items()]
        assert len(selected) == 1, (policy["metadata"]["name"], selected)
        by_service[selected[0]] = policy
    assert set(by_service) == set(SERVICES), "every service has its ingress rule"

    def own(service: str) -> tuple[None, tuple[tuple[str, str], ...]]:
        return (None, (("app.kubernetes.io/name", service),))

    gateway = (GATEWAY_PODS[0], tuple(sorted(GATEWAY_PODS[1].items())))
    broker = (BROKER_PODS[0], tuple(sorted(BROKER_PODS[1].items())))
    authorino = (AUTHORINO_NAMESPACE, ())
    assert _peers(by_service["mcp-backend"]) == {gateway, broker}
    assert _peers(by_service["token-exchange"]) == {gateway, authorino, own("mcp-backend")}
    assert _peers(by_service["policy"]) == {gateway, authorino, own("token-exchange")}
    for service in SERVICES:  # the "own" peers select real pods of the same namespace
        assert pod_labels[service]["app.kubernetes.io/name"] == service
    # the Kind Gateway is the one the selectors name (Istio labels its pods with its name)
    kind_gateway = yaml.safe_load_all(
        (paths.REPO_ROOT / "manifests" / "kind" / "gateway.yaml").read_text()
    )
    (gw,) = [o for o in kind_gateway if o and o["kind"] == "Gateway"]
    assert (gw["metadata"]["namespace"], gw["metadata"]["name"]) == (
        GATEWAY_PODS[0],
        GATEWAY_PODS[1]["gateway.networking.k8s.io/gateway-name"],
    )
    assert GATEWAY_PRINCIPAL.endswith(
        f"/sa/{gw['metadata']['name']}-{gw['spec']['gatewayClassName']}"
    )
    for target in render.TARGETS:
        if target.startswith("overlays/"):
            names = {
                o["metadata"]["name"] for o in rendered[target] if o["kind"] == "NetworkPolicy"
            }
            assert names - REDIS_RULES == {"default-deny-ingress", *policies}
            _every_pod_admits_someone(rendered[target], target)


# Redis' own rules (components/shared-token-cache, components/gateway-sessions)
REDIS_RULES = {"redis-from-token-exchange", "redis-from-mcp-broker"}


def _every_pod_admits_someone(objs: list[Obj], target: str) -> None:
    """Under the default deny, every workload of kmg-system (Redis of the shared token cache
    too) is selected by a policy that admits someone: none is cut off by the deny alone. Redis
    admits only token-exchange and, with the gateway sessions on it, the broker/router pods."""
    rules = [
        o
        for o in objs
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] != "default-deny-ingress"
    ]
    for deployment in deployments(objs):
        if deployment["metadata"]["namespace"] != SERVICE_NAMESPACE:
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selecting = [
            r for r in rules if r["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert selecting, f"{target}: {deployment['metadata']['name']} admits nobody"
        if labels["app.kubernetes.io/name"] == "redis":
            admitted = {r["metadata"]["name"]: r["spec"]["ingress"] for r in selecting}
            port = [{"port": "redis", "protocol": "TCP"}]
            assert admitted.pop("redis-from-token-exchange") == [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "token-exchange"}
                            }
                        }
                    ],
                    "ports": port,
                }
            ], target
            broker = {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": BROKER_PODS[0]}
                },
                "podSelector": {"matchLabels": BROKER_PODS[1]},
            }
            # components/gateway-sessions: the broker/router replicas' session store
            assert admitted in ({}, {"redis-from-mcp-broker": [{"from": [broker], "ports": port}]})


def test_istio_overlay_requires_mtls_from_known_principals(rendered: dict[str, list[Obj]]) -> None:
    """The mesh layer of issue 14: STRICT mTLS in kmg-system and an ALLOW policy per service
    naming the principals (ServiceAccounts) that may call which paths."""
    objs = rendered["overlays/istio-ext-authz"]
    (peer,) = [o for o in objs if o["kind"] == "PeerAuthentication"]
    assert peer["metadata"]["namespace"] == SERVICE_NAMESPACE
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}
    namespace = find(objs, "Namespace", SERVICE_NAMESPACE)
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    allows = {
        o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: o
        for o in objs
        if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "ALLOW"
    }
    assert set(allows) == set(SERVICES)

    def sa(service: str) -> str:
        deploy = find(objs, "Deployment", service, SERVICE_NAMESPACE)
        account = deploy["spec"]["template"]["spec"]["serviceAccountName"]
        return f"cluster.local/ns/{SERVICE_NAMESPACE}/sa/{account}"

    def rules(service: str) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
        policy = allows[service]
        assert policy["metadata"]["namespace"] == SERVICE_NAMESPACE
        out = []
        for rule in policy["spec"]["rules"]:
            (source,) = rule["from"]
            (to,) = rule["to"]
            op = to["operation"]
            assert set(source["source"]) == {"principals"}, "identities, never namespaces/IPs"
            out.append(
                (
                    tuple(sorted(source["source"]["principals"])),
                    tuple(op.get("methods", [])),
                    tuple(op["paths"]),
                )
            )
        return out

    assert rules("mcp-backend") == [
        (tuple(sorted([GATEWAY_PRINCIPAL, BROKER_PRINCIPAL])), (), ("/mcp",))
    ]
    assert rules("token-exchange") == [
        ((GATEWAY_PRINCIPAL,), (), ("/ext-authz/combined", "/ext-authz/combined/*")),
        ((sa("mcp-backend"),), ("POST",), ("/token",)),
    ]
    assert rules("policy") == [((sa("token-exchange"),), (), ("/check", "/check/*"))]
    # the Kind flow runs without sidecars (no istio-cni): its namespace stays out of the mesh
    kind_ns = find(rendered["overlays/kind"], "Namespace", SERVICE_NAMESPACE)
    assert "istio-injection" not in kind_ns["metadata"].get("labels", {})


@pytest.mark.parametrize("target", ["base", "overlays/istio-ext-authz", "overlays/kind"])
def test_services_demand_the_gateway_credential_and_bound_tokens(
    rendered: dict[str, list[Obj]], tmp_path: Path, target: str
) -> None:
    """Issue 14 in the configs the services really load: the checks demand the caller secret
    (mounted from one Secret into both plugins), every issuer has audiences, /check issues only
    the routed server, forwards a token only when exactly for it, and the backend refuses tokens
    not exchanged for it (the broker's discovery credential mounted for listing)."""
    for folder in ("p", "t", "b"):
        (tmp_path / folder).mkdir()
    objs = rendered[target]
    policy = load_policy(objs, tmp_path / "p")
    exchange = load_token_exchange(objs, tmp_path / "t")
    backend = load_backend(objs, tmp_path / "b")
    for name, settings in (("policy", policy), ("token-exchange", exchange)):
        caller = settings.caller_auth
        assert caller.mode == "secret", name
        assert caller.secret_file is not None
        _, volume = mount_for(
            find(objs, "Deployment", name, SERVICE_NAMESPACE), name, str(caller.secret_file)
        )
        assert volume["secret"]["secretName"].startswith("gateway-caller-secret"), name
    assert policy.caller_auth.header == exchange.caller_auth.header == "x-kmg-caller-secret"
    issuers = [*policy.auth.issuers, *exchange.validation.issuers]
    assert issuers
    assert all(i.audiences and not i.allow_any_audience for i in issuers)
    assert exchange.ext_authz.audiences == [GATEWAY_CLIENT]
    assert exchange.ext_authz.targets == [BACKEND_AUDIENCE], "cluster-b only from POST /token"
    targets = {t.audience: t for t in exchange.targets}
    assert targets[BACKEND_AUDIENCE].skip_when == "aud_exact"
    assert targets[BACKEND_AUDIENCE].subject_audiences == [GATEWAY_CLIENT]
    assert targets["cluster-b"].subject_audiences == [BACKEND_AUDIENCE]
    assert backend.accepted_audiences == [BACKEND_AUDIENCE]
    assert backend.authorized_parties == [GATEWAY_CLIENT]
    assert backend.opaque_tokens == "reject"
    assert backend.discovery_credential_file is not None
    _, volume = mount_for(
        find(objs, "Deployment", "mcp-backend", SERVICE_NAMESPACE),
        "mcp-backend",
        str(backend.discovery_credential_file),
    )
    assert volume["secret"]["secretName"].startswith("mcp-backend-discovery")
    assert "items" not in volume["secret"]
    assert backend.discovery_credential_file.name == "token", "the Secret's key"


def test_kind_demo_credentials_are_consistent(rendered: dict[str, list[Obj]]) -> None:
    """The kind overlay's demo Secrets: the backend's discovery bearer is the one the MCP
    Gateway's registration sends (its credentialRef Secret); the caller secret has a value."""

    objs = rendered["overlays/kind"]
    discovery = generated(objs, "Secret", "mcp-backend-discovery")
    registration = find(objs, "MCPServerRegistration")
    ref = registration["spec"]["credentialRef"]
    controller_secret = find(objs, "Secret", ref["name"], registration["metadata"]["namespace"])
    sent = controller_secret["stringData"][ref["key"]]
    assert base64.b64decode(discovery["data"]["token"]).decode() == sent
    caller = generated(objs, "Secret", "gateway-caller-secret")
    assert len(base64.b64decode(caller["data"]["secret"])) >= 16
