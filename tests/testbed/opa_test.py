"""Run the Rego unit tests with the testbed's OPA and print the coverage (``make opa-test``).

    python -m tests.testbed.opa_test policies [--threshold 90]

Two passes of the real ``opa test``: a verbose run (pass/fail per test; its exit status decides),
then ``--coverage --format=json``, reported per policy file and in total for the policy files
(``*_test.rego`` excluded from the total: they cover themselves).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.testbed import build


def _coverage_lines(entry: dict[str, Any]) -> tuple[int, int]:
    return int(entry.get("covered_lines", 0)), int(entry.get("not_covered_lines", 0))


def summarize(report: dict[str, Any]) -> tuple[float | None, list[str]]:
    """(coverage % of the non-test policy files or None, printable lines per file)."""
    lines, covered, missed = [], 0, 0
    for name, entry in sorted(report.get("files", {}).items()):
        cov, miss = _coverage_lines(entry)
        lines.append(f"  {float(entry.get('coverage', 0)):6.1f}%  {name}")
        if not name.endswith("_test.rego"):
            covered, missed = covered + cov, missed + miss
    total = 100.0 * covered / (covered + missed) if covered + missed else None
    return total, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help="policy folders or files")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="fail when policy coverage is below this percentage (default 0)",
    )
    args = parser.parse_args(argv)

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"opa-test: no such path: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    tests = [t for p in args.paths for t in ([p] if p.is_file() else p.rglob("*_test.rego"))]
    if not tests:
        print(
            f"opa-test: no Rego tests (*_test.rego) under {', '.join(map(str, args.paths))}",
            file=sys.stderr,
        )
        return 1
    try:
        opa = build.binary("opa")
    except FileNotFoundError as exc:
        print(f"opa-test: {exc}", file=sys.stderr)
        return 2

    targets = [str(p) for p in args.paths]
    verbose = subprocess.run([str(opa), "test", "-v", *targets], check=False)
    if verbose.returncode != 0:
        print(f"opa-test: Rego tests failed (opa exit {verbose.returncode})", file=sys.stderr)
        return verbose.returncode

    cov = subprocess.run(
        [str(opa), "test", "--coverage", "--format=json", *targets],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(cov.stdout)
    except ValueError:
        print(
            f"opa-test: coverage run gave no JSON (exit {cov.returncode}):\n{cov.stderr[-2000:]}",
            file=sys.stderr,
        )
        return 1
    total, lines = summarize(report)
    print("coverage per file:")
    print("\n".join(lines))
    if total is None:
        print("opa-test: no policy lines to cover", file=sys.stderr)
        return 1
    print(
        f"policy coverage: {total:.1f}% "
        f"(OPA overall incl. tests: {float(report.get('coverage', 0)):.1f}%)"
    )
    if total < args.threshold:
        print(
            f"opa-test: coverage {total:.1f}% is below the threshold {args.threshold:.1f}%",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
