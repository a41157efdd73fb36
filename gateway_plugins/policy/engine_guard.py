"""Before the embedded engine serves a policy: prove it decides like OPA, or refuse to start.

rego-cpp (the embedded engine, PyPI ``regopy``) evaluates some Rego constructs differently from
OPA, without an error: indexing what ``sort()`` returns for a set is undefined there (so a deny
rule built on it never fires), and strings with quotes made by builtins inside ``sprintf`` come
back unreadable. The shipped policy avoids them (see "Portability" in ``policies/mcp/authz.rego``)
and ``tests/gateway_plugins/policy/test_differential.py`` proves both engines agree on it; a
user's own policy gets the same proof here, at start:

1. **against OPA**, when an OPA binary is available (``embedded_verify.opa_binary``, else ``opa``
   on ``PATH``): the inputs of the policy's test corpus (``testdata/corpus.json`` under
   ``policies_dir``: ``{"cases": [{name, entrypoint, input, expect, config?}]}``, the cases
   ``opa test`` also asserts) and ``generated_cases`` variants of them go through both engines
   (OPA in one ``opa eval``), and every answer must be identical;
2. **without OPA**, every corpus case must give its expected answer in the embedded engine, and
3. the Rego modules must be the ones a verification record names
   (``embedded-verified.json`` in ``policies_dir``, written by ``mcp-policy verify-embedded
   --record`` where OPA is available), or ``embedded_verify.allow_unverified`` says to start anyway
   (a WARNING).

A failure raises :class:`~gateway_plugins.policy.policy_source.PolicySourceError` naming the
case, both answers and what to do. Only the modules are fingerprinted: the data files configure
the policy (grants, deny list) but bring no Rego constructs of their own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.engines import ALLOWED_PROMPTS, ALLOWED_TOOLS, DECISION, PolicyError
from gateway_plugins.policy.input import normalize_allowed
from gateway_plugins.policy.policy_source import (
    PolicySource,
    PolicySourceError,
    load_policy_source,
    snapshot_dir,
)

log = logging.getLogger(__name__)

RECORD_NAME = "embedded-verified.json"
ENTRYPOINTS = (DECISION, ALLOWED_TOOLS, ALLOWED_PROMPTS)
CORPUS_GLOB = "**/testdata/corpus.json"
_OPA_TIMEOUT_S = 120.0
# One OPA query answers every case: each with its own input and data.mcp.config (as opa test's
# corpus runner does); an undefined answer is a missing key.
# A helper module answers every case in one OPA run: each case with its own input and
# data.mcp.config, as the corpus runner of ``opa test`` does (a function, not a ``with`` inside a
# comprehension: OPA does not apply that ``with`` per element). The cases travel as data.
_VERIFY_MODULE = """package kmg_verify

_answer(c) := v if {
	c.entrypoint == "decision"
	v := data.mcp.authz.decision with input as c.input with data.mcp.config as c.config
}

_answer(c) := v if {
	c.entrypoint == "allowed_tools"
	v := data.mcp.authz.allowed_tools with input as c.input with data.mcp.config as c.config
}

_answer(c) := v if {
	c.entrypoint == "allowed_prompts"
	v := data.mcp.authz.allowed_prompts with input as c.input with data.mcp.config as c.config
}

answers[k] := v if {
	some k, c in data.kmg_verify_cases
	v := _answer(c)
}
"""


class EmbeddedVerifySettings(BaseModel):
    """How the embedded engine is checked against OPA before it serves (engine: embedded)."""

    model_config = ConfigDict(extra="forbid")

    opa_binary: Path | None = Field(
        default=None,
        description="OPA binary that checks the embedded engine's answers at start; unset: "
        "'opa' on PATH, if any.",
    )
    corpus_files: list[Path] | None = Field(
        default=None,
        description="Test corpora ({cases: [...]}); default: every testdata/corpus.json under "
        "policies_dir.",
    )
    generated_cases: int = Field(
        default=200,
        ge=0,
        le=20_000,
        description="Variants of the corpus inputs also compared with OPA.",
    )
    record_file: Path | None = Field(
        default=None,
        description="Verification record for starts without OPA; default "
        "<policies_dir>/embedded-verified.json (mcp-policy verify-embedded --record).",
    )
    allow_unverified: bool = Field(
        default=False,
        description="Start the embedded engine on a policy that neither OPA nor the record "
        "verified (a WARNING); false: refuse to start.",
    )


@dataclass(frozen=True)
class Case:
    name: str
    entrypoint: str  # decision | allowed_tools | allowed_prompts
    input: dict[str, Any]
    config: dict[str, Any]
    expect: Any = None  # corpus expectation; None for generated variants


@dataclass
class Verification:
    """What the check did (logged at start; the CLI prints it)."""

    fingerprint: str
    corpus_cases: int = 0
    compared_with_opa: int = 0
    opa_version: str | None = None
    record_matched: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.corpus_cases} corpus case(s) hold in the embedded engine"]
        if self.opa_version:
            parts.append(f"{self.compared_with_opa} case(s) decide alike in OPA {self.opa_version}")
        if self.record_matched:
            parts.append("the modules match the verification record")
        parts += self.notes
        return "; ".join(parts) + f" ({self.seconds:.2f}s)"


def modules_fingerprint(source: PolicySource) -> str:
    """SHA-256 over the Rego modules (name and text), in name order."""
    digest = hashlib.sha256()
    for name in sorted(source.modules):
        digest.update(name.encode() + b"\0" + source.modules[name].encode() + b"\0")
    return digest.hexdigest()


# -- the corpus ---------------------------------------------------------------------------------
def corpus_paths(policies_dir: Path, configured: Sequence[Path] | None) -> list[Path]:
    if configured is not None:
        return list(configured)
    return sorted(policies_dir.glob(CORPUS_GLOB))


def _corpus_data(policies_dir: Path, source: PolicySource) -> dict[str, Any]:
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


def _expected(case: Case) -> Any:
    if case.entrypoint == DECISION:
        return case.expect
    servers = (case.input.get("catalogue") or {}).keys()
    return normalize_allowed(case.expect or {}, servers)


def holds(case: Case, answer: Any) -> bool:
    """Whether an answer meets the case's expectation (a decision's reason only when given)."""
    expected = _expected(case)
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


# -- answers of both engines --------------------------------------------------------------------
_UNDEFINED = {"undefined": True}


def embedded_answers(source: PolicySource, cases: Sequence[Case]) -> list[Any]:
    """Each case's answer in the embedded engine (one engine per data config)."""
    engines: dict[str, EmbeddedEngine] = {}
    answers: list[Any] = []
    try:
        for case in cases:
            key = json.dumps(case.config, sort_keys=True)
            engine = engines.get(key)
            if engine is None:
                engine = EmbeddedEngine(
                    PolicySource(source.modules, case.config), cache_size=0, worker=False
                )
                engines[key] = engine
            answers.append(_embedded_answer(engine, case))
    finally:
        for engine in engines.values():
            engine.shutdown()
    return answers


def _embedded_answer(engine: EmbeddedEngine, case: Case) -> Any:
    try:
        if case.entrypoint == DECISION:
            return engine.evaluate_sync(case.input).as_json()
        if case.entrypoint == ALLOWED_PROMPTS:
            return engine.allowed_prompts_sync(case.input)
        return engine.allowed_tools_sync(case.input)
    except PolicyError as exc:
        return {"error": str(exc)}


def find_opa(configured: Path | None) -> Path | None:
    if configured is not None:
        if not configured.exists():
            raise PolicySourceError(f"embedded_verify.opa_binary {configured} does not exist")
        return configured
    found = shutil.which("opa")
    return Path(found) if found else None


def opa_version(opa: Path) -> str:
    try:
        out = subprocess.run(
            [str(opa), "version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PolicySourceError(f"cannot run OPA at {opa}: {exc}") from None
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class OpaRun:
    """``opa eval`` of every case, started in the background (the embedded engine answers the
    same cases meanwhile); :meth:`answers` waits for it."""

    def __init__(self, opa: Path, source: PolicySource, cases: Sequence[Case]) -> None:
        self._cases = list(cases)
        self._tmp = tempfile.TemporaryDirectory(prefix="kmg-verify-")
        root = Path(self._tmp.name)
        for name, text in source.modules.items():
            path = root / "policy" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (root / "verify").mkdir()
        (root / "verify" / "verify.rego").write_text(_VERIFY_MODULE, encoding="utf-8")
        docs = [{"entrypoint": c.entrypoint, "input": c.input, "config": c.config} for c in cases]
        (root / "verify" / "data.json").write_text(
            json.dumps({"kmg_verify_cases": docs}), encoding="utf-8"
        )
        command = [
            str(opa), "eval", "--format", "json", "--data", str(root / "policy"),
            "--data", str(root / "verify"), "data.kmg_verify.answers",
        ]  # fmt: skip
        try:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            self._tmp.cleanup()
            raise PolicySourceError(f"cannot run OPA at {opa}: {exc}") from None

    def answers(self) -> list[Any]:
        try:
            stdout, stderr = self._proc.communicate(timeout=_OPA_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise PolicySourceError(
                f"OPA did not answer the verification within {_OPA_TIMEOUT_S:.0f}s"
            ) from None
        finally:
            self._tmp.cleanup()
        if self._proc.returncode != 0:
            detail = (stderr or stdout).strip().splitlines()
            raise PolicySourceError(
                "OPA cannot evaluate the policy: " + (detail[0][:300] if detail else "no output")
            )
        result = json.loads(stdout).get("result") or []
        answers = result[0]["expressions"][0]["value"] if result else {}
        out: list[Any] = []
        for index, case in enumerate(self._cases):
            value = answers.get(str(index), _UNDEFINED)
            if value is _UNDEFINED or case.entrypoint == DECISION:
                out.append(value)
            else:
                out.append(normalize_allowed(value, (case.input.get("catalogue") or {}).keys()))
        return out

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
        self._tmp.cleanup()


def _comparable(answer: Any) -> Any:
    """The embedded engine's undefined decision is a PolicyError; OPA's a missing key."""
    if isinstance(answer, dict) and "error" in answer and "undefined" in str(answer["error"]):
        return _UNDEFINED
    return answer


# -- the check ----------------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicySourceError(f"cannot read the verification record {path}: {exc}") from None
    return doc if isinstance(doc, dict) else None


def write_record(path: Path, result: Verification) -> None:
    doc = {
        "modules_sha256": result.fingerprint,
        "opa_version": result.opa_version,
        "corpus_cases": result.corpus_cases,
        "compared_with_opa": result.compared_with_opa,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


# Verifications that passed in this process, by everything they depend on: a service started
# again on the same policy (tests, a reload) does not pay for the check twice.
_PASSED: dict[str, Verification] = {}


def verify_embedded(
    source: PolicySource,
    policies_dir: Path,
    settings: EmbeddedVerifySettings,
    *,
    require_opa: bool = False,
) -> Verification:
    """Run the checks of the module docstring; raise :class:`PolicySourceError` on a failure."""
    started = time.perf_counter()
    policies_dir = snapshot_dir(policies_dir)  # a mounted ConfigMap: its current version
    result = Verification(modules_fingerprint(source))
    cases = load_corpus(
        corpus_paths(policies_dir, settings.corpus_files), _corpus_data(policies_dir, source)
    )
    result.corpus_cases = len(cases)
    opa = find_opa(settings.opa_binary)
    record = settings.record_file or policies_dir / RECORD_NAME
    key = hashlib.sha256(
        json.dumps(
            [result.fingerprint, [c.__dict__ for c in cases], str(opa), require_opa,
             settings.generated_cases, settings.allow_unverified, _record_digest(record)],
            sort_keys=True, default=str,
        ).encode()
    ).hexdigest()  # fmt: skip
    if key in _PASSED:
        return _PASSED[key]
    if opa is not None and cases:
        _compare_with_opa(source, cases, settings.generated_cases, opa, result)
    elif require_opa:
        raise PolicySourceError(
            "no OPA binary to compare with: pass --opa PATH or put opa on PATH"
            if opa is None
            else "the policy has no test corpus (testdata/corpus.json) to compare with OPA"
        )
    else:
        _check_corpus(cases, embedded_answers(source, cases))
        _check_record(record, settings, result, no_corpus=not cases)
    result.seconds = time.perf_counter() - started
    _PASSED[key] = result
    return result


def _record_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "-"


def _check_corpus(cases: Sequence[Case], answers: Sequence[Any]) -> None:
    for case, got in zip(cases, answers, strict=True):
        if not holds(case, got):
            raise PolicySourceError(
                f"the embedded engine (rego-cpp) fails corpus case {case.name!r}: it answers "
                f"{_short(got)}, the corpus expects {_short(_expected(case))}; run the policy "
                "with engine: opa, or change the policy (see 'Portability' in "
                "policies/mcp/authz.rego)"
            )


def _compare_with_opa(
    source: PolicySource, cases: list[Case], generated: int, opa: Path, result: Verification
) -> None:
    every = cases + variants(cases, generated)
    run = OpaRun(opa, source, every)
    try:
        embedded = embedded_answers(source, every)
    except BaseException:
        run.cancel()
        raise
    # No check of the corpus' expected answers here: with OPA at hand the question is only
    # whether both engines agree. The expectations were written for the data shipped with the
    # policy, and a data change at run time (a deny-list entry) may rightly change an answer.
    official = run.answers()
    for case, mine, theirs in zip(every, embedded, official, strict=True):
        if _comparable(mine) != theirs:
            raise PolicySourceError(
                f"the embedded engine (rego-cpp) decides {case.name!r} differently from OPA: "
                f"embedded {_short(mine)}, OPA {_short(theirs)}; the policy uses a construct "
                "rego-cpp evaluates differently (see 'Portability' in policies/mcp/authz.rego): "
                "run it with engine: opa, or rewrite that rule"
            )
    result.compared_with_opa = len(every)
    result.opa_version = opa_version(opa)


def _check_record(
    path: Path, settings: EmbeddedVerifySettings, result: Verification, *, no_corpus: bool
) -> None:
    record = read_record(path)
    if record is not None and record.get("modules_sha256") == result.fingerprint:
        result.record_matched = True
        return
    why = (
        "the policy has no test corpus (testdata/corpus.json) to compare with OPA"
        if no_corpus
        else "no OPA binary is available to compare the embedded engine with"
    )
    record_state = "is missing" if record is None else "names other modules"
    message = (
        f"{why}, and the verification record {path} {record_state}: a policy the embedded "
        "engine (rego-cpp) was never compared with OPA may silently decide differently. Run "
        "`mcp-policy verify-embedded --record` where opa is installed (or set "
        "embedded_verify.opa_binary), use engine: opa, or set embedded_verify.allow_unverified: "
        "true to start anyway"
    )
    if not settings.allow_unverified:
        raise PolicySourceError(message)
    log.warning("starting the embedded engine unverified: %s", message)
    result.notes.append("UNVERIFIED (allow_unverified)")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 300 else text[:299] + "…"
