"""Keycloak in the manifests: it imports the testbed's realm files byte for byte, and every
consumer (the API server's authentication config, the services, the AuthPolicies) trusts the
issuer it serves.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.manifests.rendered_objects import (
    REALM_FILES,
    Obj,
    config_of,
    find,
    generated,
    mount_for,
    realm,
)
from tests.testbed import keycloak, paths
from tests.testbed.identity_plan import BACKEND_AUDIENCE


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
