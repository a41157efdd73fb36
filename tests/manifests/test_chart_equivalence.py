"""The Helm chart and the kustomize manifests make the same deployment for the same settings.

Each documented values file is rendered with ``helm template`` and compared, object by object and
field by field, with the kustomize target it stands for (``chart_equivalence.py`` says what is
compared and what Helm may add). The differences that remain are the chart's by design, and each
is asserted here exactly, so a new one (a drifted arg, env var, port, mount, selector,
NetworkPolicy peer, AuthPolicy rule ...) fails:

* the release namespace is Helm's (``helm install -n``): the chart does not create it; the
  README's install commands create and label it as ``manifests/base/namespace.yaml`` does;
* Istio injection: the overlay labels the namespace ``istio-injection=enabled``, the chart (which
  does not own the namespace) labels its pods ``sidecar.istio.io/inject=true``: Istio injects on
  either;
* the chart creates the backend's copy of the broker's discovery credential from the same value
  as the registration's (``discoveryCredential.create``); kustomize leaves it to the user (the
  Kind overlay generates it);
* the Kind overlay also holds Keycloak, the demo RBAC and demo-only Secrets, not the chart's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.manifests import chart, render
from tests.manifests import chart_equivalence as eq

Obj = dict[str, Any]

NS = chart.NAMESPACE
RELEASE_NAMESPACE = ("Namespace", "", NS)
BACKEND_DISCOVERY = ("Secret", NS, "mcp-backend-discovery")
SERVICES = ("mcp-backend", "token-exchange", "policy")
# what the Kind overlay adds beyond the services: Keycloak, demo RBAC, demo-only Secrets
KIND_ONLY = {
    ("ClusterRoleBinding", "", "kmg-demo-mcp-edit"),
    ("ClusterRoleBinding", "", "kmg-demo-viewer-view"),
    ("ConfigMap", "keycloak", "keycloak-realms"),
    ("Deployment", "keycloak", "keycloak"),
    ("Namespace", "", "keycloak"),
    ("Secret", "keycloak", "keycloak-admin"),
    ("Service", "keycloak", "keycloak"),
    ("Secret", NS, "gateway-caller-secret"),
    ("Secret", NS, "redis-auth"),
    ("Secret", NS, "token-cache-encryption"),
    ("Secret", NS, "token-exchange-credentials"),
}

# values file (None: the chart's defaults) -> kustomize targets, and what only kustomize has /
# only the chart has
PAIRS: dict[str | None, tuple[tuple[str, ...], set[eq.Key], set[eq.Key]]] = {
    "plain.yaml": (("base",), {RELEASE_NAMESPACE}, set()),
    None: (("base", "gateway"), {RELEASE_NAMESPACE}, {BACKEND_DISCOVERY}),
    "kuadrant.yaml": (("overlays/kuadrant",), {RELEASE_NAMESPACE}, {BACKEND_DISCOVERY}),
    "istio-ext-authz.yaml": (
        ("overlays/istio-ext-authz",),
        {RELEASE_NAMESPACE},
        {BACKEND_DISCOVERY},
    ),
    "kind.yaml": (("overlays/kind",), {RELEASE_NAMESPACE, *KIND_ONLY}, set()),
}


def _values(example: str | None) -> list[Path]:
    return [] if example is None else [chart.EXAMPLES_DIR / example]


@pytest.fixture(scope="module")
async def kustomize() -> dict[str, list[Obj]]:
    targets = sorted({t for targets, _, _ in PAIRS.values() for t in targets})
    built = await asyncio.gather(*(asyncio.to_thread(render.render, t) for t in targets))
    return dict(zip(targets, built, strict=True))


def test_every_example_has_a_kustomize_counterpart_or_none_by_design() -> None:
    """New values files must be added to PAIRS (or to the chart-only list with a reason)."""
    chart_only = {"small.yaml"}  # one replica, embedded engine: no kustomize target has that
    assert {p.name for p in chart.examples()} == {k for k in PAIRS if k} | chart_only


@pytest.mark.parametrize("example", list(PAIRS), ids=lambda e: e or "defaults")
async def test_chart_renders_what_kustomize_builds(
    kustomize: dict[str, list[Obj]], example: str | None
) -> None:
    targets, only_kustomize, only_chart = PAIRS[example]
    objs = await asyncio.to_thread(chart.template, _values(example))
    result = eq.compare(objs, [o for t in targets for o in kustomize[t]])
    assert set(result["only_kustomize"]) == only_kustomize, eq.report(result)
    assert set(result["only_chart"]) == only_chart, eq.report(result)
    differ = result["differ"]
    if example == "istio-ext-authz.yaml":
        # the one field-level difference: injection asked by pod label, not namespace label
        namespace = next(
            o for o in kustomize["overlays/istio-ext-authz"] if eq.key(o) == RELEASE_NAMESPACE
        )
        assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
        expected = {
            ("Deployment", NS, svc): [
                ".spec.template.metadata.labels.sidecar.istio.io/inject: only in the chart: 'true'"
            ]
            for svc in SERVICES
        }
        assert differ == expected, eq.report(result)
    else:
        assert differ == {}, eq.report(result)
    matched = {eq.key(o) for o in objs} - only_chart
    kinds = {k[0] for k in matched}
    # the comparison covered the objects that matter, not an empty intersection
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds


async def test_the_backend_discovery_secret_holds_the_registration_value(
    kustomize: dict[str, list[Obj]],
) -> None:
    """The Secret only the chart makes carries the value the registration's Secret (kustomize's
    gateway folder) sends, as the Kind overlay's generated one does."""
    objs = await asyncio.to_thread(chart.template)
    ours = next(o for o in objs if eq.key(o) == BACKEND_DISCOVERY)
    registration = next(
        o
        for o in kustomize["gateway"]
        if o["kind"] == "Secret" and o["metadata"]["name"] == "kubernetes-mcp-discovery"
    )
    assert ours["stringData"]["token"] == registration["stringData"]["token"]


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"networkPolicies": {"authorinoNamespace": "authorino"}}, "NetworkPolicy"),
        ({"policy": {"opa": {"image": "openpolicyagent/opa:0.70.0"}}}, "Deployment"),
        ({"tokenExchange": {"config": {"log_level": "debug"}}}, "ConfigMap"),
        ({"registration": {"prefix": "k8s_"}}, "MCPServerRegistration"),
        ({"mcpBackend": {"autoscaling": {"maxReplicas": 3}}}, "HorizontalPodAutoscaler"),
    ],
)
async def test_the_comparison_sees_a_changed_field(
    kustomize: dict[str, list[Obj]], override: dict[str, Any], where: str
) -> None:
    """Negative controls: one value changed makes the chart differ from kustomize where it
    should, so the equal results above mean something."""
    flat = _flatten(override)
    objs = await asyncio.to_thread(chart.template, [], flat)
    result = eq.compare(objs, kustomize["base"] + kustomize["gateway"])
    assert {k[0] for k in result["differ"]} == {where}, eq.report(result)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out |= _flatten(v, path)
        else:
            out[path] = v
    return out
