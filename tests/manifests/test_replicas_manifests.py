"""The multi-replica deployment in the manifests: replica counts owned by HPAs on CPU, budgets
for voluntary disruptions, spread over nodes and zones, graceful stops; the token-exchange
replicas' shared Redis cache (connection and encryption key from Secrets); the MCP Gateway
broker/router's replicas and their gateway sessions in the same Redis; the policy data as a
ConfigMap the service watches. Every object also goes through the real API server's server-side
dry-run in ``test_api_server_admission.py`` (every target of ``render.TARGETS``, ``redis``
included) and ``test_kind_flow.py`` (the Kind flow's stages); the real MCP Gateway controller
runs the broker part in ``gateway_controller/test_session_store.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.policy_files import load_file_source
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from gateway_plugins.token_exchange.redis_cache import load_material
from kmg_common.settings import load_settings
from tests.manifests import kind_flow, mcp_gateway_install, render
from tests.manifests.rendered_objects import (
    SERVICE_NAMESPACE,
    SERVICES,
    Obj,
    config_of,
    find,
    generated,
    mount_for,
    write_config,
)
from tests.testbed import paths
from tests.testbed.configmap_volume import ConfigMapVolume


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {t: render.render(t) for t in ("base", "redis", "overlays/kind")}


def _pod(deploy: Obj) -> dict[str, Any]:
    return dict(deploy["spec"]["template"]["spec"])


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_scales_on_cpu_with_a_budget_and_spread(
    rendered: dict[str, list[Obj]], service: str
) -> None:
    objs = rendered["base"]
    deploy = find(objs, "Deployment", service, SERVICE_NAMESPACE)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    # the HPA owns the count: a replicas field would reset it on every apply
    assert "replicas" not in deploy["spec"]
    hpa = find(objs, "HorizontalPodAutoscaler", service, SERVICE_NAMESPACE)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": service,
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "ContainerResource"
    assert metric["containerResource"]["name"] == "cpu"
    assert metric["containerResource"]["container"] == service  # the service, not a sidecar
    main = next(c for c in _pod(deploy)["containers"] if c["name"] == service)
    assert "cpu" in main["resources"]["requests"], "utilization needs a CPU request"
    pdb = find(objs, "PodDisruptionBudget", service, SERVICE_NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    spread = {c["topologyKey"]: c for c in _pod(deploy)["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    assert main["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert _pod(deploy)["terminationGracePeriodSeconds"] > 5


def test_policy_data_is_a_watched_configmap_the_service_loads(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = rendered["base"]
    raw = config_of(objs, "policy")
    settings = load_settings(
        PolicySettings, "policy", config_file=write_config(tmp_path, raw), environ={}
    )
    assert settings.reload.watch_files is True
    assert settings.data_dirs is not None
    (data_dir,) = settings.data_dirs
    data = find(objs, "ConfigMap", "policy-data", SERVICE_NAMESPACE)  # no hash suffix: edited
    deploy = find(objs, "Deployment", "policy", SERVICE_NAMESPACE)  # in place, never rolled
    mount, volume = mount_for(deploy, "policy", str(data_dir / "deny_list.json"))
    assert volume["configMap"]["name"] == "policy-data"
    assert mount["mountPath"] == str(data_dir)
    defaults = sorted((paths.REPO_ROOT / "policies" / "data").glob("*.json"))
    assert sorted(data["data"]) == [p.name for p in defaults]
    for path in defaults:
        assert data["data"][path.name] == path.read_text(encoding="utf-8"), path.name
    # mounted as kubelet mounts it, next to the image's policies: the service loads and compiles
    volume_dir = ConfigMapVolume(tmp_path / "policy-data")
    volume_dir.write(data["data"])
    local = settings.model_copy(
        update={
            "policies_dir": paths.REPO_ROOT / "policies",
            "data_dirs": [volume_dir.root],
            "catalogue_file": None,
        }
    )
    source = load_file_source(local, lambda _: None)
    assert source.config["deny_list"] == json.loads(data["data"]["deny_list.json"])["deny_list"]
    EmbeddedEngine(source, cache_size=0)


def test_token_exchange_shares_its_cache_through_redis_with_secrets(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objs = rendered["overlays/kind"]
    deploy = find(objs, "Deployment", "token-exchange", SERVICE_NAMESPACE)
    main = next(c for c in _pod(deploy)["containers"] if c["name"] == "token-exchange")
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    settings = load_settings(
        TokenExchangeSettings,
        "token-exchange",
        config_file=write_config(tmp_path, config_of(objs, "token-exchange")),
        environ=env,
    )
    cache = settings.cache
    assert cache.backend == "redis"
    # the URL names the Redis Service of the same overlay, without credentials
    url = urlsplit(cache.redis.url)
    assert url.hostname == f"redis.{SERVICE_NAMESPACE}.svc.cluster.local"
    assert not url.password
    svc = find(objs, "Service", "redis", SERVICE_NAMESPACE)
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    # password and encryption key are files from Secrets, whose keys exist
    secrets: dict[str, dict[str, str]] = {}
    for name, file in (
        ("redis-auth", cache.redis.password_file),
        ("token-cache-encryption", cache.redis.encryption_keys_file),
    ):
        assert file is not None
        _, volume = mount_for(deploy, "token-exchange", str(file))
        secret = generated(objs, "Secret", name)
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        key = items.get(file.name, file.name)
        assert key in secret["data"], f"{name} has no key {key}"
        value = base64.b64decode(secret["data"][key]).decode()
        secrets[name] = {"value": value}
    # the real loader reads them as the pod would (files written where the mounts are)
    local = tmp_path / "mounted"
    redis_cfg = cache.redis.model_copy(
        update={
            "password_file": _write(local / "password", secrets["redis-auth"]["value"]),
            "encryption_keys_file": _write(
                local / "keys", secrets["token-cache-encryption"]["value"]
            ),
        }
    )
    material = load_material(redis_cfg)
    assert material.password == secrets["redis-auth"]["value"]
    assert len(material.keys) == 1
    # Redis requires the same password (from the same Secret key)
    redis = find(objs, "Deployment", "redis", SERVICE_NAMESPACE)
    container = _pod(redis)["containers"][0]
    ref = next(e for e in container["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]
    auth = generated(objs, "Secret", "redis-auth")["metadata"]["name"]
    assert ref["secretKeyRef"]["name"] == auth
    assert ref["secretKeyRef"]["key"] == "password"
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--save") + 1] == ""  # nothing written to disk
    assert args[args.index("--appendonly") + 1] == "no"


def _write(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return path


def test_redis_runs_restricted_and_alone(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["redis"]
    deploy = find(objs, "Deployment", "redis")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    pod = _pod(deploy)
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"].startswith("redis:7.0.")
    assert {"Deployment", "Service"} == {o["kind"] for o in objs}


def test_broker_replicas_keep_gateway_sessions_in_the_overlays_redis(
    rendered: dict[str, list[Obj]],
) -> None:
    """Kind: the MCPGatewayExtension names a session store Secret the controller accepts (its
    namespace, label and key), whose URL is the overlay's Redis with the redis-auth password, in
    a database of its own; the component keeps at least two broker replicas, budgets their
    disruptions and lets them reach Redis."""
    objs = rendered["overlays/kind"]
    extension = find(mcp_gateway_install.render(), "MCPGatewayExtension")
    namespace = extension["metadata"]["namespace"]
    secret_name = extension["spec"]["sessionStore"]["secretName"]
    docs = yaml.safe_load_all(kind_flow.SESSION_STORE.read_text(encoding="utf-8"))
    (secret,) = [d for d in docs if d]
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
        secret_name,
        namespace,
    )
    assert secret["metadata"]["labels"]["mcp.kuadrant.io/secret"] == "true"
    url = urlsplit(secret["stringData"]["CACHE_CONNECTION_STRING"])
    assert url.scheme == "redis"
    assert url.hostname == f"redis.{SERVICE_NAMESPACE}.svc.cluster.local"
    svc = find(objs, "Service", "redis", SERVICE_NAMESPACE)
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    auth = generated(objs, "Secret", "redis-auth")
    assert url.password == base64.b64decode(auth["data"]["password"]).decode()
    assert not url.username  # requirepass: the default user
    # its own database: the token exchange's cache uses another one of the same Redis
    deploy = find(objs, "Deployment", "token-exchange", SERVICE_NAMESPACE)
    main = next(c for c in _pod(deploy)["containers"] if c["name"] == "token-exchange")
    env = {e["name"]: e.get("value") for e in main["env"]}
    token_db = urlsplit(env["KMG_TOKEN_EXCHANGE_CACHE__REDIS__URL"]).path
    assert url.path == "/1" != token_db
    # the broker Deployment the controller names: at least 2 replicas, a budget, Redis reachable
    hpa = find(objs, "HorizontalPodAutoscaler", "mcp-gateway", namespace)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mcp-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(objs, "PodDisruptionBudget", "mcp-gateway", namespace)
    assert pdb["spec"]["maxUnavailable"] == 1
    rule = find(objs, "NetworkPolicy", "redis-from-mcp-broker", SERVICE_NAMESPACE)
    redis_labels = find(objs, "Deployment", "redis", SERVICE_NAMESPACE)["spec"]["template"][
        "metadata"
    ]["labels"]
    assert rule["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (ingress,) = rule["spec"]["ingress"]
    (peer,) = ingress["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    assert (
        peer["podSelector"]["matchLabels"].items() <= pdb["spec"]["selector"]["matchLabels"].items()
    )
    assert ingress["ports"] == [{"port": "redis", "protocol": "TCP"}]
