"""The Kind flow (``make kind-up kind-deploy kind-demo``) without Docker: the commands the targets
would run (``make -n``), and every manifest they apply sent to a testbed API server.

The manifests come from ``tests/manifests/kind_flow.py`` stage by stage, the same code the
Makefile pipes into ``kubectl apply``. On cluster B (cluster A carries the testbed's newer Gateway
API CRDs; CRDs are cluster-wide): the ``gateway-api-crds`` and ``mcp-gateway-crds`` stages are
applied for real (the API server accepts them as CRDs and serves their kinds), then every object
of ``mcp-gateway`` and ``services`` goes through server-side dry-run with strict field validation
(Istio's CRDs installed too, for the overlay's AuthorizationPolicy). The ``istio`` stage is the Sail
operator's ``Istio`` kind, whose CRD cannot be fetched here: it is checked against its sources
(version pin, the overlay's mesh config) instead.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.manifests import crds, kind_flow, mcp_gateway_install
from tests.manifests.kube_apply import KubeApplier, dry_run_each
from tests.testbed import paths, versions
from tests.testbed.cluster import Cluster
from tests.testbed.pki import CertificateAuthority

Obj = dict[str, Any]
SERVER_VALIDATED = [s for s in kind_flow.STAGES if s not in kind_flow.NOT_SERVER_VALIDATED]


@pytest.fixture(scope="module")
def kind_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files ``make kind-up`` makes with openssl (``$(KIND_PKI)``), made here in Python."""
    folder = tmp_path_factory.mktemp("kind-pki")
    ca = CertificateAuthority(folder, "kube-mcp-gateway kind demo CA")
    ca.issue("keycloak", hosts=("keycloak.keycloak.svc.cluster.local", "10.96.200.10"))
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "policy-signing.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder


@pytest.fixture(scope="module")
def stages(kind_pki: Path) -> dict[str, list[Obj]]:
    return {stage: kind_flow.render(stage, kind_pki) for stage in kind_flow.STAGES}


# -- the targets ---------------------------------------------------------------------------------
def make_n() -> list[str]:
    """``make -n kind-up kind-deploy kind-demo``: the shell lines, continuation lines joined."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    proc = subprocess.run(
        ["make", "-n", "kind-up", "kind-deploy", "kind-demo", "KIND=kind"],
        cwd=paths.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ").splitlines()


def test_make_n_runs_every_stage_in_order_and_applies_nothing_else() -> None:
    lines = make_n()
    applies = [line for line in lines if " apply " in f" {line} "]
    stage_of: list[str] = []
    for line in applies:
        match = re.search(
            r"-m tests\.manifests\.kind_flow --pki \S+ (\S+) \| kubectl .* apply ", line
        )
        assert match, f"an apply whose manifests the tests do not validate: {line}"
        stage_of.append(match.group(1))
    assert stage_of == list(kind_flow.STAGES), "every stage applied once, in order"
    text = "\n".join(lines)

    def position(pattern: str) -> int:
        match = re.search(pattern, text)
        assert match, f"make -n does not run {pattern!r}"
        return match.start()

    order = [
        r"kind create cluster --name kmg",
        r"kind_flow \S+ \S+ gateway-api-crds",
        r"upgrade --install sail-operator .*sail-operator-"
        + re.escape(versions.KIND_SAIL_OPERATOR)
        + r"\.tgz",
        r"kind_flow \S+ \S+ istio ",
        r"wait --for=condition=Ready istio/default",
        r"docker build --target \$svc",
        r"kind_flow \S+ \S+ mcp-gateway-crds",
        r"wait --for condition=Established .*crd/mcpserverregistrations\.mcp\.kuadrant\.io",
        r"kind_flow \S+ \S+ mcp-gateway ",
        r"kind_flow \S+ \S+ services",
        r"rollout status deploy/mcp-gateway-controller",
        r"wait --for=condition=Ready mcpgatewayextension/mcp-gateway-extension",
        r"wait --for=condition=Ready mcpserverregistration/kubernetes-mcp",
        r"bash manifests/kind/demo\.sh",
    ]
    positions = [position(p) for p in order]
    assert positions == sorted(positions), "the targets run these steps in this order"


def test_demo_calls_through_the_gateway() -> None:
    script = (paths.REPO_ROOT / "manifests" / "kind" / "demo.sh").read_text()
    subprocess.run(["bash", "-n", "-c", script], check=True, timeout=30)
    host = re.search(r"^MCP_HOST=(\S+)", script, re.M)
    assert host
    forward = re.search(r"^forward gateway-system (\S+) \"\$GW_PORT:(\d+)\"", script, re.M)
    assert forward, "demo.sh port-forwards to the Istio gateway's Service"
    call = re.search(
        r'KMG_TOKEN="\$user_token" "\$PY" -m tests\.manifests\.kind_flow demo\s+'
        r'--url "http://127\.0\.0\.1:\$GW_PORT/mcp" --host "\$MCP_HOST"',
        script.replace("\\\n", " "),
    )
    assert call, "demo.sh's last step is the mcp client through the gateway"
    gateway = yaml.safe_load_all(
        (paths.REPO_ROOT / "manifests" / "kind" / "gateway.yaml").read_text()
    )
    (gw,) = [d for d in gateway if d and d["kind"] == "Gateway"]
    listeners = {item["name"]: item for item in gw["spec"]["listeners"]}
    # the demo talks to the listener the MCPGatewayExtension targets, on its port, by its Service
    values = yaml.safe_load(mcp_gateway_install.VALUES.read_text())
    section = values["mcpGatewayExtension"]["gatewayRef"]["sectionName"]
    assert listeners[section]["hostname"] == host.group(1) == values["gateway"]["publicHost"]
    assert int(forward.group(2)) == listeners[section]["port"]
    assert forward.group(1) == f"{gw['metadata']['name']}-{gw['spec']['gatewayClassName']}"


# -- the manifests -------------------------------------------------------------------------------
def test_istio_resource_matches_its_sources(stages: dict[str, list[Obj]]) -> None:
    """Not validated by an API server (no Sail CRD here): its version is the pinned one and its
    mesh config carries exactly the provider the istio-ext-authz overlay names."""
    (istio,) = stages["istio"]
    assert (istio["apiVersion"], istio["kind"]) == ("sailoperator.io/v1", "Istio")
    assert istio["spec"]["version"] == versions.KIND_ISTIO
    mesh = yaml.safe_load(
        (paths.REPO_ROOT / "manifests/overlays/istio-ext-authz/mesh-config.yaml").read_text()
    )
    providers = istio["spec"]["values"]["meshConfig"]["extensionProviders"]
    # the caller secret (issue 14): a placeholder in the overlay, the kind overlay's demo Secret
    # here, so the gateway's checks are answered
    (provider,) = providers
    added = provider["envoyExtAuthzHttp"].pop("includeAdditionalHeadersInCheck")
    (template,) = copy.deepcopy(mesh["meshConfig"]["extensionProviders"])
    placeholder = template["envoyExtAuthzHttp"].pop("includeAdditionalHeadersInCheck")
    assert provider == template
    assert set(added) == set(placeholder) == {"x-kmg-caller-secret"}
    assert placeholder["x-kmg-caller-secret"].startswith("<value of Secret")
    (secret,) = [
        o
        for o in stages["services"]
        if o["kind"] == "Secret" and o["metadata"]["name"].startswith("gateway-caller-secret")
    ]
    assert base64.b64decode(secret["data"]["secret"]).decode() == added["x-kmg-caller-secret"]
    (policy,) = [
        o
        for o in stages["services"]
        if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "CUSTOM"
    ]
    assert policy["spec"]["provider"]["name"] == provider["name"]


def test_mcp_gateway_stage_is_the_release_the_testbed_runs(
    stages: dict[str, list[Obj]], kind_pki: Path
) -> None:
    """The chart's CRDs are the release's config/crd ones (which the controller test runs and the
    manifest tests validate against); images are that release; the broker trusts the policy
    service's key."""
    chart_crds = {c["metadata"]["name"]: c["spec"] for c in stages["mcp-gateway-crds"]}
    release = {
        c["metadata"]["name"]: c["spec"]
        for c in crds.load_crds()
        if c["spec"]["group"] == crds.MCP_GATEWAY_GROUP
    }
    assert chart_crds == release
    objs = stages["mcp-gateway"]
    images = [
        c["image"]
        for o in objs
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [f"{mcp_gateway_install.CONTROLLER_IMAGE}:{versions.MCP_GATEWAY}"]
    deploy = mcp_gateway_install.controller_deployment(objs)
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RELATED_IMAGE_ROUTER_BROKER"] == (
        f"{mcp_gateway_install.BROKER_IMAGE}:{versions.MCP_GATEWAY}"
    )
    (extension,) = [o for o in objs if o["kind"] == "MCPGatewayExtension"]
    secret_name = extension["spec"]["trustedHeadersKey"]["secretName"]
    (secret,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == secret_name]
    assert secret["metadata"]["namespace"] == extension["metadata"]["namespace"]
    assert base64.b64decode(secret["data"]["key"]) == kind_flow.policy_public_key(kind_pki)
    # the broker's session store (gateway sessions in Redis): applied before the extension that
    # names it, in its namespace (its content: test_replicas_manifests.py)
    store_name = extension["spec"]["sessionStore"]["secretName"]
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    (store,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == store_name]
    assert store["metadata"]["namespace"] == extension["metadata"]["namespace"]
    assert names.index(("Secret", store_name)) < names.index(
        ("MCPGatewayExtension", extension["metadata"]["name"])
    )


@pytest.fixture(scope="module")
async def kind_api(cluster_b: Cluster, stages: dict[str, list[Obj]]) -> AsyncIterator[KubeApplier]:
    """Cluster B with the Kind flow's CRD stages installed for real and Istio's CRDs."""
    istio = [c for c in crds.load_crds() if c["spec"]["group"].endswith("istio.io")]
    async with KubeApplier(cluster_b) as api:
        await api.install_crds(stages["gateway-api-crds"])
        await api.install_crds(stages["mcp-gateway-crds"])
        await api.install_crds(istio)
        yield api


@pytest.mark.parametrize("stage", ["mcp-gateway", "services"])
async def test_the_api_server_accepts_every_object_of_the_stage(
    kind_api: KubeApplier, stages: dict[str, list[Obj]], stage: str
) -> None:
    objs = stages[stage]
    for ns in [o for o in objs if o["kind"] == "Namespace"]:
        await kind_api.apply(ns, dry_run=False)  # namespaced dry-runs need them to exist
    accepted, refused = await dry_run_each(kind_api, objs)
    assert not refused, "the API server refused:\n" + "\n".join(refused)
    assert all(stored["kind"] == obj["kind"] for obj, stored in accepted)


async def test_crd_stages_serve_every_kind_the_flow_uses(
    kind_api: KubeApplier, stages: dict[str, list[Obj]]
) -> None:
    """Every custom kind of the later stages is served by the CRDs the flow installs (Gateway API
    of the Kind version, not the testbed's), Istio's for the AuthorizationPolicy."""
    installed = [*stages["gateway-api-crds"], *stages["mcp-gateway-crds"]]
    served = crds.served_kinds(installed)
    used = {
        (o["apiVersion"], o["kind"])
        for stage in ("mcp-gateway", "services")
        for o in stages[stage]
        if "." in o["apiVersion"].split("/")[0]
        and not o["apiVersion"].endswith("istio.io/v1")
        and not o["apiVersion"].startswith(
            ("apps/", "rbac.authorization.k8s.io/", "networking.k8s.io/")
        )
    }
    assert used, "no custom kind in the flow: the check would be empty"
    assert used <= served, f"not served by the Kind CRDs: {used - served}"
    bundle = {
        c["metadata"].get("annotations", {}).get("gateway.networking.k8s.io/bundle-version")
        for c in stages["gateway-api-crds"]
    }
    assert bundle == {versions.KIND_GATEWAY_API}
    for api_version, kind in sorted(used):
        await kind_api.resource(api_version, kind)  # discovery: the server serves it
