"""The rendered manifests as the tests read them: the services and their namespace, lookups of
rendered objects (by kind and name, kustomize-generated ConfigMaps/Secrets, volume mounts, the
Service an in-cluster URL names), the Keycloak realm files, and each service's configuration
loaded from its rendered ConfigMap by that service's real settings loader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from kmg_common.settings import load_settings as load_plugin_settings
from mcp_backend import config as backend_config
from tests.testbed import keycloak, paths

Obj = dict[str, Any]

SERVICES = ("mcp-backend", "token-exchange", "policy")
SERVICE_NAMESPACE = "kmg-system"
REALM_FILES = sorted((paths.REPO_ROOT / "manifests" / "keycloak").glob("*.json"))
GATEWAY_CLIENT = keycloak.GATEWAY_CLIENT_ID  # the audience of users' tokens, azp of exchanged ones


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


def load_policy(objs: list[Obj], folder: Path) -> PolicySettings:
    """The policy service's settings, loaded from its rendered config (written to ``folder``)."""
    return load_plugin_settings(
        PolicySettings,
        "policy",
        config_file=write_config(folder, config_of(objs, "policy")),
        environ={},
    )


def load_token_exchange(objs: list[Obj], folder: Path) -> TokenExchangeSettings:
    """The token exchange's settings, loaded from its rendered config (written to ``folder``)."""
    return load_plugin_settings(
        TokenExchangeSettings,
        "token-exchange",
        config_file=write_config(folder, config_of(objs, "token-exchange")),
        environ={},
    )


def load_backend(objs: list[Obj], folder: Path) -> backend_config.Settings:
    """The MCP backend's settings, loaded from its rendered config (written to ``folder``)."""
    return backend_config.load_settings(
        write_config(folder, config_of(objs, "mcp-backend")), environ={}
    )
