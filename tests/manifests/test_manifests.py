"""The deployment manifests: every kustomization builds, the real API server accepts every object
(server-side dry-run, strict field validation, the real CRDs of Gateway API, Istio, Kuadrant,
Authorino and the MCP Gateway installed), pods pass the "restricted" Pod Security admission, and
the security-relevant wiring (fail-closed AuthPolicy, single ext_authz provider, configs the
services really load, the Keycloak realm files) holds in the rendered objects.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway_plugins.common.settings import load_settings as load_plugin_settings
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from mcp_backend import config as backend_config
from tests.manifests import crds, render
from tests.manifests.kube_apply import ApplyError, KubeApplier
from tests.testbed import keycloak, paths
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import BACKEND_AUDIENCE

Obj = dict[str, Any]

SERVICES = ("mcp-backend", "token-exchange", "policy")
SERVICE_NAMESPACE = "kmg-system"
REALM_FILES = sorted((paths.REPO_ROOT / "manifests" / "keycloak").glob("*.json"))
# Namespaces the dry-run test creates get this prefix, so it never touches namespaces (and their
# Pod Security labels) that other tests of the session may use on the shared cluster.
NS_PREFIX = "kmgt-"


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {target: render.render(target) for target in render.TARGETS}


def find(objs: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> Obj:
    hits = [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(hits) == 1, f"expected one {kind} {namespace}/{name}, found {len(hits)}"
    return hits[0]


def generated(objs: list[Obj], kind: str, prefix: str) -> Obj:
    """A ConfigMap/Secret made by a kustomize generator (name = prefix + '-' + content hash)."""
    hits = [
        o
        for o in objs
        if o["kind"] == kind
        and re.fullmatch(rf"{re.escape(prefix)}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(hits) == 1, f"expected one generated {kind} {prefix}-<hash>, found {len(hits)}"
    return hits[0]


def deployments(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "Deployment"]


def all_containers(pod: Mapping[str, Any]) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def config_of(objs: list[Obj], service: str) -> dict[str, Any]:
    cm = generated(objs, "ConfigMap", f"{service}-config")
    return dict(yaml.safe_load(cm["data"]["config.yaml"]))


def write_config(tmp_path: Path, data: Mapping[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dict(data)), encoding="utf-8")
    return path


def mount_for(deployment: Obj, container: str, file: str) -> tuple[Obj, Obj]:
    """(volumeMount, volume) that provides ``file`` inside ``container``."""
    pod = deployment["spec"]["template"]["spec"]
    spec = next(c for c in pod["containers"] if c["name"] == container)
    for mount in spec.get("volumeMounts", []):
        if Path(file).parent == Path(mount["mountPath"]):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return mount, volume
    raise AssertionError(f"{container}: no volume mounted at {Path(file).parent} for {file}")


def service_url_target(objs: list[Obj], url: str) -> tuple[Obj, int]:
    """The Service (and port) an in-cluster URL such as http://policy.kmg-system.svc... names."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", host)
    assert match, f"{url}: not an in-cluster Service URL"
    svc = find(objs, "Service", match.group(1), match.group(2))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    assert port in [p["port"] for p in svc["spec"]["ports"]], f"{url}: Service has no port {port}"
    return svc, port


def realm(name: str) -> dict[str, Any]:
    return dict(
        json.loads((paths.REPO_ROOT / "manifests" / "keycloak" / f"realm-{name}.json").read_text())
    )


def realm_client(realm_name: str, client_id: str) -> dict[str, Any]:
    clients = [c for c in realm(realm_name)["clients"] if c["clientId"] == client_id]
    assert len(clients) == 1, f"realm {realm_name} has no client {client_id}"
    return dict(clients[0])


# -- builds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", render.TARGETS)
def test_every_kustomization_builds(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    assert objs, f"{target} rendered nothing"
    for obj in objs:
        assert obj.get("apiVersion"), obj
        assert obj.get("kind"), obj
        assert obj["metadata"].get("name"), obj


def test_base_has_every_service_complete(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["base"]
    for service in SERVICES:
        deploy = find(objs, "Deployment", service, SERVICE_NAMESPACE)
        svc = find(objs, "Service", service, SERVICE_NAMESPACE)
        find(objs, "ServiceAccount", service, SERVICE_NAMESPACE)
        cfg = generated(objs, "ConfigMap", f"{service}-config")
        pod = deploy["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == service
        # the Deployment mounts the generated (hash-suffixed) ConfigMap, so config changes roll it
        assert cfg["metadata"]["name"] in [
            v.get("configMap", {}).get("name") for v in pod["volumes"]
        ]
        # Service selects exactly this Deployment's pods
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert deploy["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["http"]["targetPort"] == "http"
        assert ports["metrics"]["targetPort"] == "http"
        main = next(c for c in pod["containers"] if c["name"] == service)
        assert main["image"] == f"kube-mcp-gateway/{service}:dev"
        http = next(p for p in main["ports"] if p["name"] == "http")
        # the service listens where the probes and the Service point
        assert config_of(objs, service)["port"] == http["containerPort"]
        assert config_of(objs, service)["host"] == "0.0.0.0"  # noqa: S104 - pod network


# -- pod security ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [t for t in render.TARGETS if t not in ("gateway",)])
def test_pods_are_restricted(rendered: dict[str, list[Obj]], target: str) -> None:
    for deploy in deployments(rendered[target]):
        name = deploy["metadata"]["name"]
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["securityContext"].get("runAsUser", 0) != 0, name
        assert pod["automountServiceAccountToken"] is False, f"{name}: token must not be mounted"
        assert not pod.get("hostNetwork"), name
        assert not pod.get("hostPID"), name
        for c in all_containers(pod):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert sc.get("privileged") is not True, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            if name in SERVICES:
                assert sc["readOnlyRootFilesystem"] is True, where
        for c in pod["containers"]:
            assert c.get("livenessProbe"), f"{name}/{c['name']}"
            assert c.get("readinessProbe"), f"{name}/{c['name']}"
        if name in SERVICES:
            main = next(c for c in pod["containers"] if c["name"] == name)
            assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_policy_config_loads_and_opa_is_a_loopback_sidecar(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = rendered["base"]
    settings = load_plugin_settings(
        PolicySettings,
        "policy",
        config_file=write_config(tmp_path, config_of(objs, "policy")),
        environ={},
    )
    deploy = find(objs, "Deployment", "policy", SERVICE_NAMESPACE)
    pod = deploy["spec"]["template"]["spec"]
    opa = next(c for c in pod["containers"] if c["name"] == "opa")
    assert opa["image"].startswith("openpolicyagent/opa:")
    assert settings.engine == "opa"
    opa_url = urlsplit(settings.opa.url)
    # OPA's decision API listens on loopback only: reachable from this pod, nobody else
    assert f"--addr={opa_url.hostname}:{opa_url.port}" in opa["args"]
    assert opa_url.hostname == "127.0.0.1"
    # the service pushes the Rego its image ships (Dockerfile: COPY policies/ /app/policies/)
    assert settings.opa.load_policies is True
    assert str(settings.policies_dir) == "/app/policies"
    assert "COPY policies/ /app/policies/" in (paths.REPO_ROOT / "Dockerfile").read_text()
    assert (paths.REPO_ROOT / "policies" / "mcp" / "authz.rego").is_file()
    # the wristband key comes from a Secret, the Keycloak CA from a ConfigMap
    assert settings.wristband.signing_key_file is not None
    _, key_volume = mount_for(deploy, "policy", str(settings.wristband.signing_key_file))
    assert key_volume["secret"]["secretName"] == "policy-signing-key"
    assert settings.auth.ca_file is not None
    _, ca_volume = mount_for(deploy, "policy", str(settings.auth.ca_file))
    assert ca_volume["configMap"]["name"] == "keycloak-ca"
    assert settings.wristband.form.value == "both"


def test_backend_uses_no_identity_of_its_own(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend reaches its own cluster with the API server's CA only: no token is mounted
    and its config, loaded by the real settings loader, points the in-cluster entry at that CA."""
    objs = rendered["base"]
    settings = backend_config.load_settings(
        write_config(tmp_path, config_of(objs, "mcp-backend")), environ={}
    )
    assert settings.in_cluster is True
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # what the kubelet sets in the pod
    clusters = backend_config.effective_clusters(settings)
    ca_file = next(c for c in clusters if c.name == "in-cluster").ca_file
    assert ca_file is not None
    deploy = find(objs, "Deployment", "mcp-backend", SERVICE_NAMESPACE)
    _, volume = mount_for(deploy, "mcp-backend", str(ca_file))
    assert volume["configMap"]["name"] == "kube-root-ca.crt"
    assert [i["key"] for i in volume["configMap"]["items"]] == ["ca.crt"], "only the CA, no token"
    assert find(objs, "ServiceAccount", "mcp-backend")["automountServiceAccountToken"] is False
    pod = deploy["spec"]["template"]["spec"]
    helm_env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert settings.helm_binary == "/usr/local/bin/helm"
    assert all(helm_env[k].startswith("/tmp/") for k in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME"))


def test_token_exchange_config_loads_and_secrets_are_mounted(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = rendered["overlays/kind"]
    raw = config_of(objs, "token-exchange")
    settings = load_plugin_settings(
        TokenExchangeSettings, "token-exchange", config_file=write_config(tmp_path, raw), environ={}
    )
    deploy = find(objs, "Deployment", "token-exchange", SERVICE_NAMESPACE)
    secret = generated(objs, "Secret", "token-exchange-credentials")
    files = [s.client_secret_file for s in settings.sts.values()]
    files += [c.client_secret_file for c in settings.facade.clients]
    for file in files:
        assert file is not None
        _, volume = mount_for(deploy, "token-exchange", str(file))
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert file.name in secret["data"], f"Secret has no key {file.name}"
    assert settings.ca_file is not None
    _, ca_volume = mount_for(deploy, "token-exchange", str(settings.ca_file))
    assert ca_volume["configMap"]["name"] == "keycloak-ca"
    # the backend's audience is a target, exchanged at realm mcp with the realm's gateway client
    target = next(t for t in settings.targets if t.audience == BACKEND_AUDIENCE)
    sts = settings.sts[target.steps[0].sts]
    gateway = realm_client("mcp", sts.client_id)
    assert gateway["attributes"]["standard.token.exchange.enabled"] == "true"
    assert not gateway.get("publicClient")


def test_demo_secrets_match_the_realm_files(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    """The kind overlay's client secrets are the (demo-only) ones the realm files define."""
    import base64

    objs = rendered["overlays/kind"]
    secret = generated(objs, "Secret", "token-exchange-credentials")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    settings = load_plugin_settings(
        TokenExchangeSettings,
        "token-exchange",
        config_file=write_config(tmp_path, config_of(objs, "token-exchange")),
        environ={},
    )
    for sts_name, sts in settings.sts.items():
        assert sts.client_secret_file is not None
        expected = realm_client(sts_name, sts.client_id)["secret"]
        assert data[sts.client_secret_file.name] == expected, f"sts {sts_name}"
    for file in REALM_FILES:
        assert "secret-demo-only" in file.read_text(), "realm secrets must stay marked demo-only"


# -- Keycloak ----------------------------------------------------------------------------------
def test_keycloak_imports_the_testbed_realm_files(rendered: dict[str, list[Obj]]) -> None:
    """One source of truth: the realm ConfigMap holds, byte for byte, the files the testbed
    imports, and Keycloak resolves their ${KEYCLOAK_URL} to the issuer everything else trusts."""
    assert (
        keycloak.REALM_TEMPLATES.resolve() == (paths.REPO_ROOT / "manifests" / "keycloak").resolve()
    )
    assert REALM_FILES, "no realm files in manifests/keycloak"
    for target in ("keycloak-server", "overlays/kind"):
        objs = rendered[target]
        cm = generated(objs, "ConfigMap", "keycloak-realms")
        assert sorted(cm["data"]) == [f.name for f in REALM_FILES]
        for file in REALM_FILES:
            assert cm["data"][file.name] == file.read_text(encoding="utf-8"), file.name
        deploy = find(objs, "Deployment", "keycloak", "keycloak")
        pod = deploy["spec"]["template"]["spec"]
        kc = pod["containers"][0]
        assert "--import-realm" in kc["args"]
        _, volume = mount_for(deploy, "keycloak", "/opt/keycloak/data/import/realm-mcp.json")
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in kc["env"]}
        placeholders = {
            m for f in REALM_FILES for m in re.findall(r"\$\{([A-Z_]+)\}", f.read_text())
        }
        assert placeholders <= set(env), f"unresolved realm placeholders {placeholders - set(env)}"
        assert "--hostname=$(KEYCLOAK_URL)" in kc["args"]
        svc = find(objs, "Service", "keycloak", "keycloak")
        assert urlsplit(env["KEYCLOAK_URL"]).port == svc["spec"]["ports"][0]["port"]
        assert env["KEYCLOAK_URL"].startswith("https://"), "API servers need an HTTPS issuer"


def test_everyone_trusts_the_same_issuer(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    objs = rendered["overlays/kind"]
    kc = find(objs, "Deployment", "keycloak")["spec"]["template"]["spec"]["containers"][0]
    issuer = next(e["value"] for e in kc["env"] if e["name"] == "KEYCLOAK_URL") + "/realms/mcp"
    auth = yaml.safe_load(
        (paths.REPO_ROOT / "manifests" / "kind" / "authentication-config.yaml")
        .read_text()
        .replace("__KEYCLOAK_CA_PEM__", "        PEM")
    )
    assert auth["kind"] == "AuthenticationConfiguration"
    jwt = auth["jwt"][0]
    assert jwt["issuer"]["url"] == issuer
    assert BACKEND_AUDIENCE in jwt["issuer"]["audiences"]
    # discovery goes to Keycloak's fixed ClusterIP (the API server has no cluster DNS)
    svc = find(objs, "Service", "keycloak", "keycloak")
    discovery = urlsplit(jwt["issuer"]["discoveryURL"])
    assert discovery.hostname == svc["spec"]["clusterIP"]
    assert discovery.port == svc["spec"]["ports"][0]["port"]
    assert discovery.path == "/realms/mcp/.well-known/openid-configuration"
    prefix = jwt["claimMappings"]["username"]["prefix"]
    assert prefix
    assert not prefix.startswith("system:")
    subjects = [s["name"] for o in objs if o["kind"] == "ClusterRoleBinding" for s in o["subjects"]]
    users = {u["username"] for u in realm("mcp")["users"]}
    assert subjects
    assert all(s.startswith(prefix) and s[len(prefix) :] in users for s in subjects)
    te = config_of(objs, "token-exchange")
    assert [i["issuer"] for i in te["validation"]["issuers"]] == [issuer]
    assert issuer in config_of(objs, "mcp-backend")["authorization_servers"]
    for policy in (
        o for t in ("overlays/kuadrant",) for o in rendered[t] if o["kind"] == "AuthPolicy"
    ):
        assert policy["spec"]["rules"]["authentication"]["keycloak"]["jwt"]["issuerUrl"] == issuer
    # the kind cluster mounts the rendered auth config where the API server flag points
    cluster = yaml.safe_load((paths.REPO_ROOT / "manifests" / "kind" / "cluster.yaml").read_text())
    patch = yaml.safe_load(cluster["kubeadmConfigPatches"][0])
    flag = patch["apiServer"]["extraArgs"]["authentication-config"]
    mounts = [m["containerPath"] for m in cluster["nodes"][0]["extraMounts"]]
    assert str(Path(flag).parent) in mounts
    assert [v["mountPath"] for v in patch["apiServer"]["extraVolumes"]] == [str(Path(flag).parent)]


# -- gateway wiring (MCPServerRegistration: the real controller, test_gateway_controller.py) ---
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


def test_istio_uses_one_combined_provider(rendered: dict[str, list[Obj]], tmp_path: Path) -> None:
    objs = rendered["overlays/istio-ext-authz"]
    folder = paths.REPO_ROOT / "manifests" / "overlays" / "istio-ext-authz"
    mesh = yaml.safe_load((folder / "mesh-config.yaml").read_text())
    (provider,) = mesh["meshConfig"]["extensionProviders"]
    policies = [o for o in objs if o["kind"] == "AuthorizationPolicy"]
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
    settings = load_plugin_settings(
        TokenExchangeSettings,
        "token-exchange",
        config_file=write_config(tmp_path, overlay),
        environ={},
    )
    policy_url = settings.ext_authz.policy_url
    assert policy_url is not None
    ext_authz = {k: v for k, v in overlay["ext_authz"].items() if k != "policy_url"}
    assert {**overlay, "ext_authz": ext_authz} == base, "istio overlay config drifted from base"
    svc, _ = service_url_target(objs, policy_url)
    assert svc["metadata"]["name"] == "policy"
    assert urlsplit(policy_url).path == "/check"


def test_dockerfile_builds_one_nonroot_image_per_service(rendered: dict[str, list[Obj]]) -> None:
    text = (paths.REPO_ROOT / "Dockerfile").read_text()
    stages = {
        name: parent for parent, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)
    }
    scripts = console_scripts()
    for service, script in zip(
        SERVICES, ("mcp-backend", "mcp-token-exchange", "mcp-policy"), strict=True
    ):
        assert stages.get(service) == "runtime", f"no image target {service}"
        block = text.split(f"AS {service}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f'ENTRYPOINT ["{script}"]' in block
        assert script in scripts
        assert "USER" not in block, "service stages inherit the non-root user"
    runtime = text.split("AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    backend = text.split("AS mcp-backend\n", 1)[1].split("\nFROM ", 1)[0]
    assert "/usr/local/bin/helm" in backend
    assert "COPY tests/testbed/go/helm/ " in text  # the testbed's pinned helm
    assert (paths.REPO_ROOT / "tests" / "testbed" / "go" / "helm" / "go.sum").is_file()
    for deploy in deployments(rendered["base"]):
        uid = deploy["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        assert uid == 10001, "pods run as the images' user"


def console_scripts() -> set[str]:
    import tomllib

    data = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())
    return set(data["project"]["scripts"])


# -- the real API server ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def crd_objects() -> list[Obj]:
    return crds.load_crds()


@pytest.fixture(scope="session")
async def applier(cluster_a: Cluster, crd_objects: list[Obj]) -> AsyncIterator[KubeApplier]:
    """Cluster A's API server with the real CRDs installed; test namespaces removed afterwards."""
    async with KubeApplier(cluster_a) as api:
        await api.install_crds(crd_objects)
        yield api
        for name in sorted(api.created_namespaces):
            await api.delete_namespace(name)


def test_crds_cover_every_kind_we_use(
    rendered: dict[str, list[Obj]], crd_objects: list[Obj]
) -> None:
    served = crds.served_kinds(crd_objects)
    custom = {
        (o["apiVersion"], o["kind"])
        for objs in rendered.values()
        for o in objs
        if "." in o["apiVersion"].split("/")[0]
        and not o["apiVersion"].startswith(("apps/", "rbac.authorization.k8s.io/"))
    }
    assert custom, "no custom kind rendered: the check would be empty"
    assert custom - served == set(), "a custom kind lacks its CRD"


def remap_namespaces(objs: list[Obj]) -> tuple[list[Obj], dict[str, Obj | None]]:
    """Copies of ``objs`` in ``NS_PREFIX``-ed namespaces; the namespaces to create (with the
    rendered Namespace object when there is one, so its Pod Security labels apply)."""
    out: list[Obj] = []
    namespaces: dict[str, Obj | None] = {}
    for obj in objs:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if obj["kind"] == "Namespace" and obj["apiVersion"] == "v1":
            meta["name"] = NS_PREFIX + meta["name"]
            namespaces[meta["name"]] = obj
        elif meta.get("namespace"):
            meta["namespace"] = NS_PREFIX + meta["namespace"]
            namespaces.setdefault(meta["namespace"], None)
        out.append(obj)
    return out, namespaces


async def ensure_namespaces(api: KubeApplier, namespaces: Mapping[str, Obj | None]) -> None:
    for name, obj in namespaces.items():
        body = obj or {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await api.apply(body, dry_run=False)
        api.created_namespaces.add(name)


@pytest.mark.parametrize("target", render.TARGETS)
async def test_server_side_dry_run_accepts_everything(
    rendered: dict[str, list[Obj]], applier: KubeApplier, target: str
) -> None:
    objs, namespaces = remap_namespaces(rendered[target])
    await ensure_namespaces(applier, namespaces)
    checked = 0
    errors: list[str] = []
    for obj in objs:
        try:
            stored = await applier.apply(obj, dry_run=True)
        except ApplyError as exc:
            errors.append(str(exc))
            continue
        checked += 1
        assert stored["metadata"]["name"] == obj["metadata"]["name"]
        assert stored["kind"] == obj["kind"]
    assert not errors, "the API server refused:\n" + "\n".join(errors)
    assert checked == len(objs)


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
    authz = copy.deepcopy(next(o for o in istio_objs if o["kind"] == "AuthorizationPolicy"))
    authz["spec"]["action"] = "CUSTOMISED"
    with pytest.raises(ApplyError) as bad_action:
        await applier.apply(authz, dry_run=True)
    assert bad_action.value.status in (400, 422)
