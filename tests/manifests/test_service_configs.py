"""Each service's rendered configuration, loaded by that service's real settings loader: OPA as a
loopback sidecar of the policy service, a backend without an identity of its own, the token
exchange's secrets mounted where its config points and matching the (demo-only) realm files.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mcp_backend import config as backend_config
from tests.manifests.rendered_objects import (
    REALM_FILES,
    SERVICE_NAMESPACE,
    Obj,
    find,
    generated,
    load_backend,
    load_policy,
    load_token_exchange,
    mount_for,
    realm_client,
)
from tests.testbed import paths
from tests.testbed.identity_plan import BACKEND_AUDIENCE


def test_policy_config_loads_and_opa_is_a_loopback_sidecar(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = rendered["base"]
    settings = load_policy(objs, tmp_path)
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
    settings = load_backend(objs, tmp_path)
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
    settings = load_token_exchange(objs, tmp_path)
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

    objs = rendered["overlays/kind"]
    secret = generated(objs, "Secret", "token-exchange-credentials")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    settings = load_token_exchange(objs, tmp_path)
    for sts_name, sts in settings.sts.items():
        assert sts.client_secret_file is not None
        expected = realm_client(sts_name, sts.client_id)["secret"]
        assert data[sts.client_secret_file.name] == expected, f"sts {sts_name}"
    for file in REALM_FILES:
        assert "secret-demo-only" in file.read_text(), "realm secrets must stay marked demo-only"
