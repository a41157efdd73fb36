"""The Helm chart ``charts/kube-mcp-gateway``: ``helm lint``; ``helm template`` of every documented
values file, whose settings the services' real loaders accept and whose mounted files are where
the settings point; wrong values refused at install with a message naming the value; the real API
server accepts every rendered object (server-side dry-run, strict field validation, the real CRDs);
the schema and the README's values table are current. A real install and upgrade:
``test_chart_install.py``; the chart against the kustomize manifests: ``test_chart_equivalence.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from kmg_common.settings import load_settings as load_plugin_settings
from mcp_backend import config as backend_config
from tests.manifests import chart, chart_schema
from tests.manifests.chart import HelmError, Obj
from tests.manifests.kube_apply import (
    NS_PREFIX,
    KubeApplier,
    dry_run_each,
    ensure_namespaces,
    remap_namespaces,
)
from tests.testbed import paths

EXAMPLES = chart.examples()
SERVICES = ("mcp-backend", "token-exchange", "policy")
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def example_id(path: Path | None) -> str:
    return "defaults" if path is None else path.name


@pytest.fixture(scope="module")
async def rendered() -> dict[str, list[Obj]]:
    cases: list[Path | None] = [None, *EXAMPLES]
    objs = await asyncio.gather(
        *(asyncio.to_thread(chart.template, [] if c is None else [c]) for c in cases)
    )
    return {example_id(c): o for c, o in zip(cases, objs, strict=True)}


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def values_of(example: str) -> dict[str, Any]:
    """The chart's values merged with one example's (as helm merges maps; lists replace)."""
    merged = yaml.safe_load(chart_schema.VALUES_FILE.read_text(encoding="utf-8"))
    if example != "defaults":
        override = yaml.safe_load((chart.EXAMPLES_DIR / example).read_text(encoding="utf-8"))
        merged = _merge(merged, override)
    return dict(merged)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- lint, schema, README ------------------------------------------------------------------------
@pytest.mark.parametrize("example", [None, *EXAMPLES], ids=example_id)
def test_helm_lint_passes(example: Path | None) -> None:
    out = chart.lint([] if example is None else [example])
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[ERROR]" not in out
    assert "[WARNING]" not in out


def test_schema_and_readme_table_are_current() -> None:
    assert chart_schema.SCHEMA_FILE.read_text(encoding="utf-8") == chart_schema.render_schema(), (
        "values.schema.json is stale: run `python -m tests.manifests.chart_schema --write`"
    )
    block = chart_schema.current_block(paths.REPO_ROOT.joinpath("README.md").read_text())
    assert block == chart_schema.render_table(), (
        "README.md's Helm values table is stale: run `python -m tests.manifests.chart_schema "
        "--write`"
    )


def test_readme_documents_every_example_and_the_install() -> None:
    readme = paths.REPO_ROOT.joinpath("README.md").read_text(encoding="utf-8")
    section = readme.split("## Helm chart", 1)[1].split("\n## ", 1)[0]
    for example in EXAMPLES:
        assert f"examples/{example.name}" in section, example.name
    assert "helm install" in section
    assert "helm upgrade" in section


def test_every_value_has_a_schema_entry() -> None:
    """values.yaml holds no key the schema does not describe (the schema refuses unknown keys,
    so helm would refuse the chart's own defaults) and the defaults are what the services'
    models accept: rendering the defaults validates them."""
    schema = json.loads(chart_schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    values = yaml.safe_load(chart_schema.VALUES_FILE.read_text(encoding="utf-8"))
    assert set(values) == set(schema["properties"])
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object" and sub.get("additionalProperties") is False:
            assert set(values[key]) <= set(sub["properties"]), key


def test_policy_data_defaults_are_the_repository_files(rendered: dict[str, list[Obj]]) -> None:
    files = sorted((paths.REPO_ROOT / "policies" / "data").glob("*.json"))
    values = yaml.safe_load(chart_schema.VALUES_FILE.read_text(encoding="utf-8"))
    assert values["policy"]["data"] == {f.name: json.loads(f.read_text()) for f in files}
    data = find(rendered["defaults"], "ConfigMap", "policy-data")["data"]
    assert {k: json.loads(v) for k, v in data.items()} == values["policy"]["data"]


# -- wrong values ----------------------------------------------------------------------------------
WRONG: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({"authMode": "istio"}, ("/authMode", "'plain', 'kuadrant', 'istio-ext-authz'")),
    ({"mcpBackend.replica": 3}, ("/mcpBackend", "'replica' not allowed")),
    ({"policy.config.reload.watch_file": True}, ("/policy/config/reload", "'watch_file'")),
    (
        {"tokenExchange.config.sts.mcp.client_auth": "nope"},
        ("/tokenExchange/config/sts/mcp/client_auth", "client_secret_basic"),
    ),
    ({"publicUrl": "http://gw.example/mcp"}, ("/publicUrl", "does not match pattern")),
    ({"mcpBackend.autoscaling.minReplicas": 0}, ("/mcpBackend/autoscaling/minReplicas",)),
    ({"policy.data": {"deny_list": {}}}, ("/policy/data", "'deny_list' not allowed")),
    ({"tokenExchange.sharedCache.redisUrl": "redis://u:pw@redis:6379"}, ("/redisUrl",)),
    (
        {"authMode": "kuadrant", "registration.enabled": False},
        ("authMode kuadrant needs registration.enabled",),
    ),
    ({"tokenExchange.sharedCache.enabled": True}, ("needs a Redis", "redis.enabled=true")),
    ({"redis.enabled": True}, ("tokenExchange.sharedCache.enabled=true",)),
    (
        {"registration.name": "other-mcp"},
        ('"mcp-test/other-mcp"', "mcpBackend.config.accepted_audiences"),
    ),
    ({"policy.autoscaling.minReplicas": 9}, ("minReplicas (9) is above maxReplicas (6)",)),
]


def test_an_old_kubernetes_is_refused() -> None:
    with pytest.raises(HelmError) as refused:
        chart.helm(["template", "kmg", str(chart.CHART), "--kube-version", "1.29.9"])
    assert "Kubernetes v1.29.9 is too old for this chart: it needs 1.30" in refused.value.stderr


@pytest.mark.parametrize(("overrides", "says"), WRONG, ids=lambda v: str(v)[:48])
def test_wrong_values_fail_with_a_clear_message(
    overrides: dict[str, Any], says: tuple[str, ...]
) -> None:
    with pytest.raises(HelmError) as refused:
        chart.template([], overrides)
    message = refused.value.stderr
    for fragment in says:
        assert fragment in message, message
    assert "goroutine" not in message
    assert "panic" not in message.lower()
    assert len(message) < 2000, "one clear message, not a dump"


# -- the services accept what the chart renders -----------------------------------------------
def _config(objs: list[Obj], service: str) -> dict[str, Any]:
    cm = find(objs, "ConfigMap", f"{service}-config")
    return dict(yaml.safe_load(cm["data"]["config.yaml"]))


def _main(objs: list[Obj], service: str) -> Obj:
    pod = find(objs, "Deployment", service)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == service)


def _load(objs: list[Obj], service: str, tmp_path: Path) -> Any:
    file = tmp_path / f"{service}.yaml"
    file.write_text(yaml.safe_dump(_config(objs, service)), encoding="utf-8")
    env = {e["name"]: e["value"] for e in _main(objs, service).get("env", []) if "value" in e}
    if service == "mcp-backend":
        return backend_config.load_settings(file, environ=env)
    model = PolicySettings if service == "policy" else TokenExchangeSettings
    return load_plugin_settings(model, service, config_file=file, environ=env)


def _source(objs: list[Obj], service: str, file: Path) -> tuple[str, str, str]:
    """(kind, name, key) of the Secret or ConfigMap that provides ``file`` in the container."""
    deploy = find(objs, "Deployment", service)
    pod = deploy["spec"]["template"]["spec"]
    mount = next(
        (m for m in _main(objs, service)["volumeMounts"] if file.parent == Path(m["mountPath"])),
        None,
    )
    assert mount is not None, f"{service}: nothing mounted at {file.parent} for {file}"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    source = volume.get("secret") or volume.get("configMap")
    assert source is not None, f"{service}: {file} is on volume {volume}"
    kind = "Secret" if "secret" in volume else "ConfigMap"
    name = source.get("secretName") or source.get("name")
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    return kind, name, items.get(file.name, file.name)


@pytest.mark.parametrize("example", ["defaults", *(p.name for p in EXAMPLES)])
def test_services_load_the_rendered_settings_and_find_their_files(
    rendered: dict[str, list[Obj]], example: str, tmp_path: Path
) -> None:
    """Each config passes the service's real settings loader (with the env the chart sets), and
    every file a setting names is mounted from the Secret or ConfigMap the values name."""
    objs = rendered[example]
    values = values_of(example)
    backend = _load(objs, "mcp-backend", tmp_path)
    exchange: TokenExchangeSettings = _load(objs, "token-exchange", tmp_path)
    policy: PolicySettings = _load(objs, "policy", tmp_path)
    caller = ("Secret", values["callerAuth"]["secretName"], "secret")
    ca = ("ConfigMap", values["keycloakCA"]["configMap"], "ca.crt")
    credentials = values["existingSecrets"]["tokenExchangeCredentials"]
    expected: list[tuple[str, Path | None, tuple[str, str, str]]] = [
        (
            "mcp-backend",
            backend.discovery_credential_file,
            ("Secret", values["discoveryCredential"]["backendSecret"], "token"),
        ),
        ("token-exchange", exchange.caller_auth.secret_file, caller),
        ("token-exchange", exchange.ca_file, ca),
        ("policy", policy.caller_auth.secret_file, caller),
        ("policy", policy.auth.ca_file, ca),
        (
            "policy",
            policy.wristband.signing_key_file,
            ("Secret", values["existingSecrets"]["policySigningKey"], "key.pem"),
        ),
    ]
    for sts in exchange.sts.values():
        assert sts.client_secret_file is not None
        file = sts.client_secret_file
        expected.append(("token-exchange", file, ("Secret", credentials, file.name)))
    for client in exchange.facade.clients:
        assert client.client_secret_file is not None
        file = client.client_secret_file
        expected.append(("token-exchange", file, ("Secret", credentials, file.name)))
    cache = values["tokenExchange"]["sharedCache"]
    if cache["enabled"]:
        assert exchange.cache.backend == "redis"
        expected += [
            (
                "token-exchange",
                exchange.cache.redis.password_file,
                ("Secret", cache["passwordSecret"], "password"),
            ),
            (
                "token-exchange",
                exchange.cache.redis.encryption_keys_file,
                ("Secret", cache["encryptionKeysSecret"], "keys"),
            ),
        ]
        assert exchange.cache.redis.url.startswith("redis://redis.")
        find(objs, "Service", "redis")
    else:
        assert exchange.cache.backend == "memory"
    for service, mounted, source in expected:
        assert mounted is not None, (service, source)
        assert _source(objs, service, mounted) == source, (service, mounted)
    assert policy.data_dirs is not None
    (data_dir,) = policy.data_dirs
    assert _source(objs, "policy", data_dir / "deny_list.json")[:2] == ("ConfigMap", "policy-data")
    # the engine follows the OPA choice: the sidecar on loopback, or the embedded engine alone
    pod = find(objs, "Deployment", "policy")["spec"]["template"]["spec"]
    containers = [c["name"] for c in pod["containers"]]
    if values["policy"]["opa"]["enabled"]:
        assert policy.engine == "opa"
        opa = next(c for c in pod["containers"] if c["name"] == "opa")
        assert "--addr=127.0.0.1:8181" in opa["args"]
        assert policy.opa.url == "http://127.0.0.1:8181"
    else:
        assert policy.engine == "embedded"
        assert containers == ["policy"]
        ports = [p["name"] for p in find(objs, "Service", "policy")["spec"]["ports"]]
        assert "opa-metrics" not in ports
    # the public URL and the check wiring of the chosen mode
    assert backend.resource_url == values["publicUrl"] + "/mcp"
    if values["authMode"] == "istio-ext-authz":
        assert exchange.ext_authz.policy_url == (
            f"http://policy.{chart.NAMESPACE}.svc.cluster.local:8080/check"
        )
    else:
        assert exchange.ext_authz.policy_url is None


@pytest.mark.parametrize("example", ["defaults", *(p.name for p in EXAMPLES)])
def test_replicas_follow_the_autoscaling_choice(
    rendered: dict[str, list[Obj]], example: str
) -> None:
    objs = rendered[example]
    values = values_of(example)
    for service, key in zip(SERVICES, ("mcpBackend", "tokenExchange", "policy"), strict=True):
        deploy = find(objs, "Deployment", service)
        own = values[key]
        hpas = [
            o
            for o in objs
            if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == service
        ]
        if own["autoscaling"]["enabled"]:
            assert "replicas" not in deploy["spec"], "the HPA owns the count"
            (hpa,) = hpas
            assert hpa["spec"]["minReplicas"] == own["autoscaling"]["minReplicas"]
        else:
            assert deploy["spec"]["replicas"] == own["replicas"]
            assert hpas == []
        pdbs = [
            o
            for o in objs
            if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == service
        ]
        assert len(pdbs) == int(own["podDisruptionBudget"]["enabled"])
        spread = deploy["spec"]["template"]["spec"].get("topologySpreadConstraints")
        assert bool(spread) == own["topologySpread"]


# -- the real API server ---------------------------------------------------------------------------
@pytest.mark.parametrize("example", ["defaults", *(p.name for p in EXAMPLES)])
async def test_server_side_dry_run_accepts_every_rendered_object(
    rendered: dict[str, list[Obj]], applier: KubeApplier, example: str
) -> None:
    """Every object, in namespaces of its own (the release namespace labelled Pod Security
    restricted as the README's commands do), through server-side apply with dryRun=All and
    strict field validation, with the real CRDs installed."""
    objs, namespaces = remap_namespaces(rendered[example])
    release = NS_PREFIX + chart.NAMESPACE
    namespaces[release] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": release, "labels": RESTRICTED},
    }
    await ensure_namespaces(applier, namespaces)
    accepted, refused = await dry_run_each(applier, objs)
    assert not refused, "the API server refused:\n" + "\n".join(refused)
    assert all(stored["kind"] == obj["kind"] for obj, stored in accepted)
    assert len(accepted) == len(objs)
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= {o["kind"] for o in objs}
