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
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from kmg_common.host_origin import HostOriginRule, service_rule
from kmg_common.settings import load_settings as load_plugin_settings
from mcp_backend import config as backend_config
from mcp_backend.transport.host_origin_guard import host_origin_rule
from tests.manifests import crds, render
from tests.manifests.kube_apply import ApplyError, KubeApplier
from tests.testbed import keycloak, paths
from tests.testbed.identity_plan import BACKEND_AUDIENCE
from tests.testbed.mcp_gateway.stack import SERVER_PLANS

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


def custom_authorization_policies(objs: list[Obj]) -> list[Obj]:
    """The Istio AuthorizationPolicies that delegate to an ext_authz provider (action CUSTOM)."""
    return [
        o
        for o in objs
        if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "CUSTOM"
    ]


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


# -- Host and Origin checks (DNS rebinding protection) -------------------------------------------
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
    backend = backend_config.load_settings(
        write_config(tmp_path, config_of(objs, "mcp-backend")), environ={}
    )
    rules["mcp-backend"] = host_origin_rule(backend)
    exchange = load_plugin_settings(
        TokenExchangeSettings,
        "token-exchange",
        config_file=write_config(tmp_path, config_of(objs, "token-exchange")),
        environ={},
    )
    rules["token-exchange"] = service_rule(exchange)
    policy = load_plugin_settings(
        PolicySettings,
        "policy",
        config_file=write_config(tmp_path, config_of(objs, "policy")),
        environ={},
    )
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
    backend = backend_config.load_settings(
        write_config(tmp_path, config_of(objs, "mcp-backend")), environ={}
    )
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


# -- issue 14: who may reach and ask each service ---------------------------------------------
GATEWAY_CLIENT = keycloak.GATEWAY_CLIENT_ID  # the audience of users' tokens, azp of exchanged ones
# The callers of a default install (the Kind Gateway; the MCP Gateway controller's broker
# Deployment, checked against the real controller in test_gateway_controller.py).
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


def _loaded(rendered: dict[str, list[Obj]], target: str, tmp_path: Path) -> dict[str, Any]:
    objs = rendered[target]
    return {
        "policy": load_plugin_settings(
            PolicySettings,
            "policy",
            config_file=write_config(tmp_path / "p", config_of(objs, "policy")),
            environ={},
        ),
        "token-exchange": load_plugin_settings(
            TokenExchangeSettings,
            "token-exchange",
            config_file=write_config(tmp_path / "t", config_of(objs, "token-exchange")),
            environ={},
        ),
        "mcp-backend": backend_config.load_settings(
            write_config(tmp_path / "b", config_of(objs, "mcp-backend")), environ={}
        ),
    }


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
    loaded = _loaded(rendered, target, tmp_path)
    policy: PolicySettings = loaded["policy"]
    exchange: TokenExchangeSettings = loaded["token-exchange"]
    backend: backend_config.Settings = loaded["mcp-backend"]
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
    import base64

    objs = rendered["overlays/kind"]
    discovery = generated(objs, "Secret", "mcp-backend-discovery")
    registration = find(objs, "MCPServerRegistration")
    ref = registration["spec"]["credentialRef"]
    controller_secret = find(objs, "Secret", ref["name"], registration["metadata"]["namespace"])
    sent = controller_secret["stringData"][ref["key"]]
    assert base64.b64decode(discovery["data"]["token"]).decode() == sent
    caller = generated(objs, "Secret", "gateway-caller-secret")
    assert len(base64.b64decode(caller["data"]["secret"])) >= 16


def test_kuadrant_overlay_presents_the_caller_secret_and_checks_the_audience(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """Authorino calls /v1/decide with the policy's caller secret (a Secret in its namespace,
    in the header the policy reads) and requires the caller's token to be for the gateway: a
    token exchanged for a server is not replayable through either route (run for real by
    tests/e2e/test_authorino.py)."""
    (tmp_path / "p").mkdir()
    policy_settings = load_plugin_settings(
        PolicySettings,
        "policy",
        config_file=write_config(tmp_path / "p", config_of(rendered["base"], "policy")),
        environ={},
    )
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


# -- the real API server (fixtures crd_objects and applier: tests/manifests/conftest.py) -------
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
