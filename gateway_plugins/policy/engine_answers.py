"""Both engines' answers to the verification cases of :mod:`.engine_guard`.

The embedded engine (rego-cpp) answers each case in process, one engine per data config; OPA
answers every case in one ``opa eval`` of a helper module (:class:`OpaRun`). Undefined answers
are made comparable (:func:`comparable`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.engine_corpus import Case
from gateway_plugins.policy.engines import ALLOWED_PROMPTS, DECISION, PolicyError
from gateway_plugins.policy.input import normalize_allowed
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError

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


def comparable(answer: Any) -> Any:
    """The embedded engine's undefined decision is a PolicyError; OPA's a missing key."""
    if isinstance(answer, dict) and "error" in answer and "undefined" in str(answer["error"]):
        return _UNDEFINED
    return answer
