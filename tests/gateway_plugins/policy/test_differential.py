"""Differential test: the embedded engine (rego-cpp) and a real OPA server decide alike.

Every case of the shared corpus (``policies/mcp/testdata/corpus.json``, also asserted by
``opa test``) and a few hundred generated requests run through both engines; decisions, reasons
and tool lists must be identical, and the corpus expectations must hold in both.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.input import normalize_allowed, policy_arguments
from gateway_plugins.policy.opa_engine import OpaOptions, OpaServerEngine
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError, load_policy_source
from tests.gateway_plugins.policy.running import POLICIES
from tests.testbed.opa_server import OpaServer

CORPUS = json.loads((POLICIES / "mcp" / "testdata" / "corpus.json").read_text())["cases"]
DEFAULT = load_policy_source(POLICIES)


def _source(config: Any) -> PolicySource:
    return DEFAULT if config == "default" else PolicySource(DEFAULT.modules, config or {})


def _groups() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in CORPUS:
        by_config[json.dumps(case.get("config", {}), sort_keys=True)].append(case)
    yield from sorted(by_config.items())


async def _engines(opa: OpaServer, source: PolicySource) -> tuple[EmbeddedEngine, OpaServerEngine]:
    embedded = EmbeddedEngine(source, cache_size=0)  # every decision evaluated
    await embedded.start()
    server = OpaServerEngine(source, OpaOptions(url=opa.url, timeout_s=5.0))
    await server.start()
    assert server.loads == 1
    return embedded, server


async def _both(
    engines: tuple[EmbeddedEngine, OpaServerEngine], case: dict[str, Any]
) -> tuple[Any, Any]:
    embedded, server = engines
    if case["entrypoint"] == "decision":
        return await embedded.evaluate(case["input"]), await server.evaluate(case["input"])
    return await embedded.allowed_tools(case["input"]), await server.allowed_tools(case["input"])


def test_corpus_is_substantial() -> None:
    kinds = {case["entrypoint"] for case in CORPUS}
    assert kinds == {"decision", "allowed_tools"}
    assert len(CORPUS) >= 50
    assert len({case["name"] for case in CORPUS}) == len(CORPUS), "case names must be unique"


async def test_corpus_same_in_both_engines(policy_opa: OpaServer) -> None:
    checked = 0
    for config_key, cases in _groups():
        engines = await _engines(policy_opa, _source(json.loads(config_key)))
        try:
            for case in cases:
                got_embedded, got_opa = await _both(engines, case)
                assert got_embedded == got_opa, f"engines differ on {case['name']!r}"
                if case["entrypoint"] == "decision":
                    assert got_opa.allow is case["expect"]["allow"], case["name"]
                    if "reason" in case["expect"]:
                        assert got_opa.reason == case["expect"]["reason"], case["name"]
                else:
                    servers = (case["input"].get("catalogue") or {}).keys()
                    assert got_opa == normalize_allowed(case["expect"], servers), case["name"]
                checked += 1
        finally:
            for engine in engines:
                await engine.close()
    assert checked == len(CORPUS)


_SERVER = "mcp-test/kubernetes-mcp"
_TOOLS = {
    "pods_list": True,
    "pods_get": True,
    "helm_list": True,
    "pods_exec": False,
    "pods_delete": False,
    "helm_install": False,
}
_CONFIG = next(c["config"] for c in CORPUS if c["name"] == "deny list wins over role")
_PROMPTS = ("cluster-health-check", "triage")


def _random_request(rng: random.Random) -> dict[str, Any]:
    roles = [rng.choice(["", "tool:"]) + tool for tool in _TOOLS if rng.random() < 0.3] + (
        ["read-only"] if rng.random() < 0.2 else []
    )
    roles += [f"prompt:{p}" for p in _PROMPTS if rng.random() < 0.4]
    groups = [
        g for g in ("mcp-viewers", "/sre", "helm-users", "mcp-suspended") if rng.random() < 0.15
    ]
    claims: dict[str, Any] = {
        "preferred_username": rng.choice(["mcp", "intern", "viewer"]),
        "resource_access": {_SERVER: {"roles": roles}},
        "groups": groups,
    }
    if rng.random() < 0.5:
        catalogue = {
            _SERVER: [{"name": n, "annotations": {"readOnly": ro}} for n, ro in _TOOLS.items()]
        }
        return {"method": "tools/list", "claims": claims, "catalogue": catalogue}
    if rng.random() < 0.2:
        return {
            "method": "prompts/get",
            "server": rng.choice([_SERVER, _SERVER, "team-a/other-mcp"]),
            "prompt": {"name": rng.choice([*_PROMPTS, "unknown"])},
            "claims": claims,
        }
    tool = rng.choice(list(_TOOLS))
    doc: dict[str, Any] = {
        "method": rng.choice(["tools/call", "tools/call", "initialize"]),
        "server": rng.choice([_SERVER, _SERVER, "team-a/other-mcp"]),
        "tool": {
            "name": tool,
            "annotations": {"readOnly": _TOOLS[tool]} if rng.random() < 0.8 else {},
        },
        "claims": claims,
    }
    if rng.random() < 0.7:
        args: dict[str, Any] = {"name": "p"}
        namespace = rng.choice([None, "default", "kube-system", "apps", "prod"])
        if namespace:
            args["namespace"] = namespace
        if rng.random() < 0.1:
            args["all_namespaces"] = True
        doc["arguments"] = args
    return doc


@pytest.mark.parametrize("config_name", ["corpus config", "default data"])
async def test_generated_requests_same_in_both_engines(
    policy_opa: OpaServer, config_name: str
) -> None:
    source = PolicySource(DEFAULT.modules, _CONFIG) if config_name == "corpus config" else DEFAULT
    embedded, server = await _engines(policy_opa, source)
    rng = random.Random(20261121)
    outcomes: set[bool] = set()
    try:
        for _ in range(250):
            doc = _random_request(rng)
            if doc["method"] == "tools/list":
                assert await embedded.allowed_tools(doc) == await server.allowed_tools(doc), doc
                prompts = await server.allowed_prompts(doc)
                assert await embedded.allowed_prompts(doc) == prompts, doc
            else:
                got_embedded, got_opa = await embedded.evaluate(doc), await server.evaluate(doc)
                assert got_embedded == got_opa, doc
                outcomes.add(got_opa.allow)
    finally:
        await embedded.close()
        await server.close()
    assert outcomes == {True, False}, "the generated requests must exercise allow and deny"


def _projected(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as the service builds it: only the arguments the policy reads."""
    return {**doc, "arguments": policy_arguments(doc["arguments"])}


async def test_projected_arguments_decide_like_the_full_arguments_in_both_engines(
    policy_opa: OpaServer,
) -> None:
    """The service keeps only POLICY_ARGUMENTS in the input: the shipped policy must decide the
    projected input exactly like the full one (same allow, same reason), in both engines."""
    checked = 0
    for config_key, cases in _groups():
        calls = [c for c in cases if c["entrypoint"] == "decision" and "arguments" in c["input"]]
        if not calls:
            continue
        embedded, server = await _engines(policy_opa, _source(json.loads(config_key)))
        try:
            for case in calls:
                full = await server.evaluate(case["input"])
                projected = _projected(case["input"])
                assert await server.evaluate(projected) == full, case["name"]
                assert await embedded.evaluate(projected) == full, case["name"]
                checked += 1
        finally:
            await embedded.close()
            await server.close()
    assert checked >= 5
    embedded, server = await _engines(policy_opa, PolicySource(DEFAULT.modules, _CONFIG))
    rng = random.Random(20261122)
    junk = {"access_token": "eyJ.e30.sig", "resource": "kind: Secret", "command": ["sh"]}
    outcomes: set[bool] = set()
    try:
        for _ in range(200):
            doc = _random_request(rng)
            if "arguments" not in doc:
                continue
            doc["arguments"] |= {k: v for k, v in junk.items() if rng.random() < 0.5}
            if rng.random() < 0.2:
                doc["arguments"]["all_namespaces"] = rng.choice([True, False, "yes", 1, None])
            full = await server.evaluate(doc)
            assert await server.evaluate(_projected(doc)) == full, doc
            assert await embedded.evaluate(_projected(doc)) == full, doc
            outcomes.add(full.allow)
    finally:
        await embedded.close()
        await server.close()
    assert outcomes == {True, False}


async def test_decision_cache_is_exact() -> None:
    engine = EmbeddedEngine(DEFAULT, cache_size=2)
    cases = [c for c in CORPUS if c["entrypoint"] == "decision" and "config" not in c][:3]
    first = [await engine.evaluate(c["input"]) for c in cases]
    assert engine.cache_hits == 0
    again = await engine.evaluate(cases[2]["input"])
    assert again == first[2]
    assert engine.cache_hits == 1
    assert await engine.evaluate(cases[0]["input"]) == first[0]  # evicted (size 2), re-evaluated
    assert engine.cache_hits == 1
    await engine.close()


async def test_opa_serving_our_bundle_decides_like_embedded(
    testbed_run_dir: Path, tmp_path: Path
) -> None:
    """`mcp-policy bundle` output served by OPA itself (engine opa, load_policies false)."""
    bundle = tmp_path / "policy.tar.gz"
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway_plugins.policy.cli", "bundle", "--out", str(bundle),
         "--policies-dir", str(POLICIES), "--revision", "test"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    opa = OpaServer(testbed_run_dir, load=[bundle], name="opa-bundle").start()
    embedded = EmbeddedEngine(DEFAULT, cache_size=0)
    server = OpaServerEngine(DEFAULT, OpaOptions(url=opa.url, load_policies=False))
    try:
        await server.start()
        assert server.loads == 0  # nothing pushed: OPA serves the bundle
        cases = [c for c in CORPUS if c.get("config") == "default"]
        assert cases
        for case in cases:
            assert await server.evaluate(case["input"]) == await embedded.evaluate(case["input"])
            assert (await server.evaluate(case["input"])).allow is case["expect"]["allow"]
    finally:
        await server.close()
        await embedded.close()
        opa.stop()


def test_policy_source_refuses_bad_data_files(tmp_path: Path) -> None:
    def load(**files: str) -> None:
        folder = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for name, text in files.items():
            (folder / f"{name}.json").write_text(text)
        load_policy_source(POLICIES, [folder])

    with pytest.raises(PolicySourceError, match=r"a\.json is not valid JSON"):
        load(a="{nope")
    with pytest.raises(PolicySourceError, match="must hold a JSON object"):
        load(a="[1]")
    with pytest.raises(PolicySourceError, match="'deny_list' is set by both"):
        load(a='{"deny_list": []}', b='{"deny_list": []}')
    with pytest.raises(PolicySourceError, match=r"deny_list\[0\]\.reason: .* quote"):
        load(a=json.dumps({"deny_list": [{"tools": ["x"], "reason": 'say "no"'}]}))
    with pytest.raises(PolicySourceError, match="does not exist"):
        load_policy_source(POLICIES, [tmp_path / "missing"])
    with pytest.raises(PolicySourceError, match="no Rego modules"):
        load_policy_source(tmp_path)
