"""The corpus both engines answer before the embedded engine serves (:mod:`.engine_guard`).

The policy's test corpus (``testdata/corpus.json`` under ``policies_dir``: ``{"cases": [{name,
entrypoint, input, expect, config?}]}``, the cases ``opa test`` also asserts), whether an answer
holds what a case expects, and seeded variants of the corpus inputs (other tools, servers,
namespaces, roles) that OPA and the embedded engine must also answer alike.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_plugins.policy.engines import ALLOWED_PROMPTS, ALLOWED_TOOLS, DECISION
from gateway_plugins.policy.input import normalize_allowed
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError, load_policy_source

ENTRYPOINTS = (DECISION, ALLOWED_TOOLS, ALLOWED_PROMPTS)
CORPUS_GLOB = "**/testdata/corpus.json"


@dataclass(frozen=True)
class Case:
    name: str
    entrypoint: str  # decision | allowed_tools | allowed_prompts
    input: dict[str, Any]
    config: dict[str, Any]
    expect: Any = None  # corpus expectation; None for generated variants


# -- the corpus ---------------------------------------------------------------------------------
def corpus_paths(policies_dir: Path, configured: Sequence[Path] | None) -> list[Path]:
    if configured is not None:
        return list(configured)
    return sorted(policies_dir.glob(CORPUS_GLOB))


def corpus_data(policies_dir: Path, source: PolicySource) -> dict[str, Any]:
    """What a case's ``"config": "default"`` means: the data files shipped beside the policy
    (``<policies_dir>/data``, as ``opa test`` loads them), whatever data the service runs with."""
    if (policies_dir / "data").is_dir():
        return load_policy_source(policies_dir).config
    return dict(source.config)


def load_corpus(paths: Iterable[Path], default_config: Mapping[str, Any]) -> list[Case]:
    """The cases of the corpus files; ``"config": "default"`` = ``default_config``."""
    cases: list[Case] = []
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PolicySourceError(f"cannot read the policy test corpus {path}: {exc}") from None
        raw = doc.get("cases") if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise PolicySourceError(f"{path}: expected {{'cases': [...]}}")
        for i, item in enumerate(raw):
            cases.append(_case(item, default_config, f"{path.name}[{i}]"))
    return cases


def _case(item: Any, default_config: Mapping[str, Any], where: str) -> Case:
    if not isinstance(item, dict) or item.get("entrypoint") not in ENTRYPOINTS:
        raise PolicySourceError(
            f"{where}: a case needs entrypoint decision, allowed_tools or allowed_prompts"
        )
    if not isinstance(item.get("input"), dict):
        raise PolicySourceError(f"{where}: a case needs an input object")
    config = item.get("config", {})
    if config == "default":
        config = dict(default_config)
    if not isinstance(config, dict):
        raise PolicySourceError(f"{where}: config must be an object or 'default'")
    return Case(
        str(item.get("name", where)), item["entrypoint"], item["input"], config, item.get("expect")
    )


def expected_answer(case: Case) -> Any:
    if case.entrypoint == DECISION:
        return case.expect
    servers = (case.input.get("catalogue") or {}).keys()
    return normalize_allowed(case.expect or {}, servers)


def holds(case: Case, answer: Any) -> bool:
    """Whether an answer meets the case's expectation (a decision's reason only when given)."""
    expected = expected_answer(case)
    if case.entrypoint != DECISION:
        return bool(answer == expected)
    if not isinstance(answer, dict) or not isinstance(expected, dict):
        return False
    if answer.get("allow") is not expected.get("allow"):
        return False
    return "reason" not in expected or answer.get("reason") == expected["reason"]


# -- generated variants -------------------------------------------------------------------------
def variants(cases: Sequence[Case], count: int, seed: int = 20261205) -> list[Case]:
    """``count`` inputs made from the corpus by swapping tools, annotations, namespaces, groups
    and methods between its cases: paths the corpus does not walk exactly."""
    if not cases or count <= 0:
        return []
    rng = random.Random(seed)  # noqa: S311 - test inputs, not secrets
    pool = _pools(cases)
    out: list[Case] = []
    for n in range(count):
        base = rng.choice(cases)
        doc = copy.deepcopy(base.input)
        entrypoint = base.entrypoint
        if entrypoint == DECISION:
            _vary_call(doc, pool, rng)
        elif rng.random() < 0.5:  # the prompts a list request's user may see
            entrypoint = ALLOWED_PROMPTS if entrypoint == ALLOWED_TOOLS else ALLOWED_TOOLS
        claims = doc.get("claims")
        if isinstance(claims, dict) and pool["groups"] and rng.random() < 0.4:
            claims["groups"] = rng.sample(pool["groups"], k=rng.randint(0, len(pool["groups"])))
        out.append(Case(f"generated #{n} (from {base.name})", entrypoint, doc, base.config))
    return out


def _pools(cases: Sequence[Case]) -> dict[str, list[Any]]:
    tools: set[str] = set()
    namespaces: set[str] = {"kube-system", "default"}
    groups: set[str] = set()
    methods: set[str] = {"tools/call", "initialize"}
    prompts: set[str] = {"cluster-health-check"}
    for case in cases:
        doc = case.input
        prompt = doc.get("prompt")
        if isinstance(prompt, dict) and isinstance(prompt.get("name"), str):
            prompts.add(prompt["name"])
        tool = doc.get("tool")
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            tools.add(tool["name"])
        args = doc.get("arguments")
        if isinstance(args, dict) and isinstance(args.get("namespace"), str):
            namespaces.add(args["namespace"])
        claims = doc.get("claims")
        if isinstance(claims, dict) and isinstance(claims.get("groups"), list):
            groups.update(g for g in claims["groups"] if isinstance(g, str))
        if isinstance(doc.get("method"), str):
            methods.add(doc["method"])
    return {
        "tools": sorted(tools),
        "namespaces": sorted(namespaces),
        "groups": sorted(groups),
        "methods": sorted(methods),
        "prompts": sorted(prompts),
    }


def _vary_call(doc: dict[str, Any], pool: Mapping[str, list[Any]], rng: random.Random) -> None:
    tool = doc.get("tool")
    if isinstance(tool, dict):
        if pool["tools"] and rng.random() < 0.5:
            tool["name"] = rng.choice(pool["tools"])
        if rng.random() < 0.4:
            tool["annotations"] = rng.choice([{}, {"readOnly": True}, {"readOnly": False}])
    if rng.random() < 0.2:
        doc["method"] = rng.choice(pool["methods"])
    if rng.random() < 0.15:  # the same request as a prompts/get
        doc["method"] = "prompts/get"
        doc["prompt"] = {"name": rng.choice(pool["prompts"])}
    if rng.random() < 0.5:
        args: dict[str, Any] = {}
        if rng.random() < 0.8:
            args["namespace"] = rng.choice(pool["namespaces"])
        if rng.random() < 0.15:
            args["all_namespaces"] = True
        doc["arguments"] = args
    elif rng.random() < 0.2:
        doc.pop("arguments", None)
