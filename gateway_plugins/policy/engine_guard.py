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

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from gateway_plugins.policy.engine_answers import (
    OpaRun,
    comparable,
    embedded_answers,
    find_opa,
    opa_version,
)
from gateway_plugins.policy.engine_corpus import (
    Case,
    corpus_data,
    corpus_paths,
    expected_answer,
    holds,
    load_corpus,
    variants,
)
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError, snapshot_dir
from kmg_common.settings import StrictModel

log = logging.getLogger(__name__)

RECORD_NAME = "embedded-verified.json"


class EmbeddedVerifySettings(StrictModel):
    """How the embedded engine is checked against OPA before it serves (engine: embedded)."""

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
        corpus_paths(policies_dir, settings.corpus_files), corpus_data(policies_dir, source)
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
                f"{_short(got)}, the corpus expects {_short(expected_answer(case))}; run the "
                "policy with engine: opa, or change the policy (see 'Portability' in "
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
        if comparable(mine) != theirs:
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
