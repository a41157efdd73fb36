"""The Rego policy on its own, with the real OPA: format, strict check, unit tests, coverage."""

from __future__ import annotations

import json
import subprocess

from tests.testbed import build
from tests.testbed.opa_test import summarize
from tests.testbed.paths import REPO_ROOT

POLICIES = REPO_ROOT / "policies"


def _opa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build.binary("opa")), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_policies_are_formatted() -> None:
    result = _opa("fmt", "--list", str(POLICIES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"run `opa fmt -w policies/` on: {result.stdout}"


def test_policies_pass_strict_check() -> None:
    result = _opa("check", "--strict", str(POLICIES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rego_unit_tests_pass_with_high_coverage() -> None:
    verbose = _opa("test", "--verbose", str(POLICIES))
    assert verbose.returncode == 0, verbose.stdout[-3000:] + verbose.stderr
    assert "FAIL" not in verbose.stdout
    passed = [line for line in verbose.stdout.splitlines() if ": PASS" in line]
    assert len(passed) >= 50, verbose.stdout[-2000:]
    covered = _opa("test", "--coverage", "--format=json", str(POLICIES))
    assert covered.returncode == 0, covered.stderr
    total, lines = summarize(json.loads(covered.stdout))
    assert total is not None
    assert total >= 98.0, "\n".join(lines)


def _comment_block_above(lines: list[str], index: int) -> list[str]:
    block = []
    while index > 0 and lines[index - 1].startswith("#"):
        index -= 1
        block.append(lines[index])
    return block


def test_every_entrypoint_and_exported_rule_has_metadata() -> None:
    lines = (POLICIES / "mcp" / "authz.rego").read_text().splitlines()
    exported = ("decision :=", "allowed_tools :=", "allowed_tools_parts :=", "grants(",
                "listed_denials(")  # fmt: skip
    entrypoints = 0
    for rule in exported:
        index = next(i for i, line in enumerate(lines) if line.startswith(rule))
        block = _comment_block_above(lines, index)
        assert "# METADATA" in block, f"{rule} lacks a METADATA block right above it"
        assert any(line.startswith("# title: ") for line in block), rule
        entrypoints += "# entrypoint: true" in block
    assert entrypoints == 3
