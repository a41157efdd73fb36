"""The rendered manifests against the real API server (fixtures ``crd_objects`` and ``applier``:
tests/manifests/conftest.py): the CRDs of Gateway API, Istio, Kuadrant, Authorino and the MCP
Gateway cover every kind we use, server-side dry-run with strict field validation accepts every
object, the "restricted" Pod Security admission admits every pod, and negative controls show the
CRD validation is live.
"""

from __future__ import annotations

import copy

import pytest

from tests.manifests import crds, render
from tests.manifests.kube_apply import (
    ApplyError,
    KubeApplier,
    dry_run_each,
    ensure_namespaces,
    remap_namespaces,
)
from tests.manifests.rendered_objects import (
    SERVICES,
    Obj,
    custom_authorization_policies,
    deployments,
)


def test_crds_cover_every_kind_we_use(
    rendered: dict[str, list[Obj]], crd_objects: list[Obj]
) -> None:
    served = crds.served_kinds(crd_objects)
    custom = {
        (o["apiVersion"], o["kind"])
        for objs in rendered.values()
        for o in objs
        if "." in o["apiVersion"].split("/")[0]
        and not o["apiVersion"].startswith(
            ("apps/", "rbac.authorization.k8s.io/", "networking.k8s.io/")
        )
    }
    assert custom, "no custom kind rendered: the check would be empty"
    assert custom - served == set(), "a custom kind lacks its CRD"


@pytest.mark.parametrize("target", render.TARGETS)
async def test_server_side_dry_run_accepts_everything(
    rendered: dict[str, list[Obj]], applier: KubeApplier, target: str
) -> None:
    objs, namespaces = remap_namespaces(rendered[target])
    await ensure_namespaces(applier, namespaces)
    accepted, refused = await dry_run_each(applier, objs)
    assert not refused, "the API server refused:\n" + "\n".join(refused)
    for obj, stored in accepted:
        assert stored["metadata"]["name"] == obj["metadata"]["name"]
        assert stored["kind"] == obj["kind"]
    assert len(accepted) == len(objs)


def pod_from(deploy: Obj, namespace: str) -> Obj:
    template = copy.deepcopy(deploy["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": deploy["metadata"]["name"],
            "namespace": namespace,
            "labels": template["metadata"].get("labels", {}),
        },
        "spec": template["spec"],
    }


@pytest.mark.parametrize("target", ["overlays/kind"])
async def test_restricted_pod_security_admits_every_pod(
    rendered: dict[str, list[Obj]], applier: KubeApplier, target: str
) -> None:
    """The real PodSecurity admission of the API server (namespaces labelled enforce=restricted)
    admits every pod template; a privilege-escalating variant is refused, so the check is live."""
    objs, namespaces = remap_namespaces(rendered[target])
    await ensure_namespaces(applier, namespaces)
    # admission looks the pods' ServiceAccounts up: create them (for real, in the test namespaces)
    for namespace in namespaces:
        default_sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
        await applier.apply(default_sa, dry_run=False)
    for account in (o for o in objs if o["kind"] == "ServiceAccount"):
        await applier.apply(account, dry_run=False)
    pods = [(o["metadata"]["namespace"], o) for o in deployments(objs)]
    assert {d["metadata"]["name"] for _, d in pods} == {*SERVICES, "keycloak", "redis"}
    for namespace, deploy in pods:
        labels = (namespaces[namespace] or {}).get("metadata", {}).get("labels", {})
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", namespace
        await applier.create_pod_dry_run(namespace, pod_from(deploy, namespace))
    namespace, deploy = next((n, d) for n, d in pods if d["metadata"]["name"] == "policy")
    bad = pod_from(deploy, namespace)
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApplyError) as refused:
        await applier.create_pod_dry_run(namespace, bad)
    assert refused.value.status == 403
    assert "allowPrivilegeEscalation" in refused.value.message


async def test_crd_validation_is_live(rendered: dict[str, list[Obj]], applier: KubeApplier) -> None:
    """Negative controls: the installed CRDs reject what upstream rejects (unknown field, a CEL
    rule of AuthPolicy, a bad CUSTOM action), so a passing dry-run above means something."""
    objs, namespaces = remap_namespaces(rendered["overlays/kuadrant"])
    await ensure_namespaces(applier, namespaces)
    policy = next(o for o in objs if o["kind"] == "AuthPolicy")
    typo = copy.deepcopy(policy)
    typo["spec"]["rules"]["metadata"]["policy"]["http"]["urll"] = "http://x"
    with pytest.raises(ApplyError, match="urll"):
        await applier.apply(typo, dry_run=True)
    no_auth = copy.deepcopy(policy)
    no_auth["spec"]["targetRef"]["group"] = "example.com"
    with pytest.raises(ApplyError, match=r"gateway\.networking\.k8s\.io"):
        await applier.apply(no_auth, dry_run=True)
    istio_objs, istio_ns = remap_namespaces(rendered["overlays/istio-ext-authz"])
    await ensure_namespaces(applier, istio_ns)
    authz = copy.deepcopy(custom_authorization_policies(istio_objs)[0])
    authz["spec"]["action"] = "CUSTOMISED"
    with pytest.raises(ApplyError) as bad_action:
        await applier.apply(authz, dry_run=True)
    assert bad_action.value.status in (400, 422)
    # issue 14's objects are validated too: mTLS mode enum, principals' field name, and a
    # NetworkPolicy peer (built-in schema)
    peer = copy.deepcopy(next(o for o in istio_objs if o["kind"] == "PeerAuthentication"))
    peer["spec"]["mtls"]["mode"] = "STRICTEST"
    with pytest.raises(ApplyError, match="STRICTEST"):
        await applier.apply(peer, dry_run=True)
    allow = copy.deepcopy(
        next(
            o
            for o in istio_objs
            if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "ALLOW"
        )
    )
    allow["spec"]["rules"][0]["from"][0]["source"]["principal"] = ["x"]
    with pytest.raises(ApplyError, match="principal"):
        await applier.apply(allow, dry_run=True)
    netpol = copy.deepcopy(next(o for o in istio_objs if o["kind"] == "NetworkPolicy"))
    netpol["spec"]["policyTypes"] = ["Sideways"]
    with pytest.raises(ApplyError, match="Sideways"):
        await applier.apply(netpol, dry_run=True)
