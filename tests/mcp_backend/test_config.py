"""Settings loading (pure): YAML < env < flags, clear errors, kubeconfig import without
credentials, registry selection by annotations, duplicate refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mcp_backend.cluster_config import clusters_from_kubeconfig
from mcp_backend.config import Settings, SettingsError, effective_clusters, load_settings
from mcp_backend.tools import all_tools
from mcp_backend.tools.base import DuplicateTool, ToolRegistry

CONFIG = """
port: 9000
read_only: false
clusters:
  - name: a
    server: https://127.0.0.1:6443
    ca_data: "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----"
  - name: b
    server: https://10.0.0.2:6443/
    default: true
    token_exchange: {url: "https://sts.example/token", audience: cluster-b}
"""


def test_layers_yaml_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "backend.yaml"
    path.write_text(CONFIG)
    settings = load_settings(
        path,
        environ={
            "KMG_BACKEND_PORT": "9100",
            "KMG_BACKEND_READ_ONLY": "true",
            "KMG_BACKEND_DISABLED_TOOLS": '["pods_exec"]',
        },
        overrides={"port": 9200, "read_only": None},
    )
    assert settings.port == 9200  # flag beats env beats file
    assert settings.read_only is True  # env (the flag was not given)
    assert settings.disabled_tools == ["pods_exec"]
    b = settings.clusters[1]
    assert b.server == "https://10.0.0.2:6443"
    assert b.token_exchange is not None
    assert [c.name for c in effective_clusters(settings) if c.default] == ["b"]


def test_bad_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("port: 1\nclusters: [\n")
    with pytest.raises(SettingsError, match=r"bad.yaml:3:1"):
        load_settings(path, environ={})


def test_inline_secret_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(
        "clusters:\n"
        "  - name: a\n"
        "    server: https://10.0.0.1:6443\n"
        "    token_exchange: {url: 'https://sts/token', client_id: b, client_secret: s3cr3t}\n"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert "'clusters.0.token_exchange.client_secret' holds a secret in plain text" in message
    assert "client_secret_file" in message
    assert "s3cr3t" not in message


def test_invalid_values_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("clusters:\n  - name: a\n    server: ftp://x\n")
    with pytest.raises(SettingsError, match=r"clusters\.0\.server: .*http\(s\) URL"):
        load_settings(path, environ={})
    with pytest.raises(SettingsError, match="duplicate cluster names: a"):
        load_settings(
            None,
            environ={},
            overrides={
                "clusters": [
                    {"name": "a", "server": "https://x"},
                    {"name": "a", "server": "https://y"},
                ]
            },
        )
    with pytest.raises(SettingsError, match="no cluster configured"):
        effective_clusters(Settings())


def test_kubeconfig_import_takes_server_and_ca_only(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: ctx-b\n"
        "clusters:\n"
        "- name: one\n  cluster: {server: 'https://1.1.1.1', certificate-authority: ca.pem}\n"
        "- name: two\n  cluster: {server: 'https://2.2.2.2', insecure-skip-tls-verify: true}\n"
        "contexts:\n- name: ctx-b\n  context: {cluster: two, user: u}\n"
        "users:\n- name: u\n  user: {token: super-secret-token}\n"
        "- name: basic\n  user: {username: admin, password: basic-auth-password}\n"
    )
    clusters = clusters_from_kubeconfig(
        path
    )  # credentials in a kubeconfig are ignored, not refused
    assert [(c.name, c.default) for c in clusters] == [("one", False), ("two", True)]
    assert clusters[0].ca_file == tmp_path / "ca.pem"
    assert "super-secret-token" not in repr(clusters)
    assert "basic-auth-password" not in repr(clusters)


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    registry = all_tools()
    spec = registry.get("pods_list")
    assert spec is not None
    with pytest.raises(DuplicateTool, match="pods_list"):
        ToolRegistry([spec, spec])
    with pytest.raises(ValueError, match=r"unknown tool names .*pods_lst"):
        registry.select(Settings(enabled_tools=["pods_lst"]))


def test_read_only_selection_follows_annotations_only() -> None:
    registry = all_tools()
    selected = registry.select(Settings(read_only=True))
    assert {s.name for s in selected} == {s.name for s in registry if s.annotations.read_only}
    assert all(
        not s.annotations.destructive for s in registry.select(Settings(disable_destructive=True))
    )


def test_bad_ca_data_is_a_clear_error() -> None:
    cfg = Settings.model_validate(
        {"clusters": [{"name": "a", "server": "https://x", "ca_data": "not base64 !!"}]}
    ).clusters[0]
    with pytest.raises(SettingsError, match="ca_data is neither PEM nor base64"):
        cfg.ca_pem()


def test_in_cluster_mode_uses_the_service_env_and_mounted_ca() -> None:
    from mcp_backend.cluster_config import in_cluster_config

    cfg = in_cluster_config(
        {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    )
    assert cfg.name == "in-cluster"
    assert cfg.server == "https://10.96.0.1:443"
    assert str(cfg.ca_file) == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert (
        in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd00::1"}).server == "https://[fd00::1]:443"
    )
    with pytest.raises(SettingsError, match="KUBERNETES_SERVICE_HOST is not"):
        in_cluster_config({})


def test_denied_kinds_are_validated_at_load() -> None:
    for entry, field in (
        ({"kind": "v1/Secret"}, "kind"),
        ({"kind": "Secret "}, None),  # surrounding blanks are trimmed, not an error
        ({"group": "rbac.authorization.k8s.io/v1"}, "group"),
        ({"group": "Apps Group", "kind": "Deployment"}, "group"),
    ):
        if field is None:
            assert load_settings(overrides={"denied_kinds": [entry]}, environ={})
            continue
        with pytest.raises(SettingsError, match=rf"denied_kinds\.0\.{field}"):
            load_settings(overrides={"denied_kinds": [entry]}, environ={})
    core = {"group": "core", "kind": "Secret"}
    settings = load_settings(overrides={"denied_kinds": [core]}, environ={})
    assert settings.denied_kinds[0].group == ""


def test_helm_chart_sources_default_and_refuse_an_empty_prefix() -> None:
    assert Settings().helm_chart_sources == ["oci://", "https://"]
    with pytest.raises(SettingsError, match="helm_chart_sources"):
        load_settings(overrides={"helm_chart_sources": ["https://", " "]}, environ={})
    env = {"KMG_BACKEND_HELM_CHART_SOURCES": '["oci://", "/srv/charts"]'}
    assert load_settings(environ=env).helm_chart_sources == ["oci://", "/srv/charts"]


def test_the_readme_documents_every_setting_and_its_example_loads() -> None:
    """Each setting has a row in mcp_backend/README.md's options table (the token-binding
    settings of issue 14 were missing), and the example configuration is one the backend
    accepts, bound to the gateway as the manifests bind it."""
    readme = (Path(__file__).parents[2] / "mcp_backend" / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in readme]
    assert missing == [], f"settings without a row in mcp_backend/README.md: {missing}"
    example = re.search(r"```yaml\n# backend.yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert example is not None
    doc = yaml.safe_load(example.group(1))
    for cluster in doc["clusters"]:  # the README abbreviates these; the rest loads as written
        cluster.pop("ca_file", None)
        cluster.pop("ca_data", None)
    settings = Settings.model_validate(doc)
    assert settings.accepted_audiences == ["mcp-test/kubernetes-mcp"]
    assert settings.authorized_parties == ["mcp-gateway"]
