"""The README's tool table, generated from the backend's tool registry (names, parameters,
annotations, first sentence of each description).

``python -m tests.readme_tools --write`` rewrites the block between the markers in README.md;
``tests/test_readme.py`` fails when the README and the registry disagree.
"""

from __future__ import annotations

import argparse
import re
import sys

from mcp_backend.tools import all_tools
from mcp_backend.tools.base import ToolSpec
from tests.readme_options import README

_PARENTHESES = re.compile(r"\s*\([^()]*\)")
BEGIN = "<!-- tool-table:begin (generated: python -m tests.readme_tools --write) -->"
END = "<!-- tool-table:end -->"


def _flags(spec: ToolSpec) -> str:
    a = spec.annotations
    return "/".join(str(int(v)) for v in (a.read_only, a.destructive, a.idempotent, a.open_world))


def _parameters(spec: ToolSpec) -> str:
    names = [f"`{n}`{'*' if n in spec.required else ''}" for n in spec.properties]
    return ", ".join(names) or "none"


def _summary(spec: ToolSpec) -> str:
    """The description's first sentence without its parentheses."""
    first = _PARENTHESES.sub("", spec.description.split(". ")[0]).rstrip(".")
    return first.replace("|", "\\|")


def render() -> str:
    rows = [
        BEGIN,
        "",
        "| tool | parameters (`*` required) | R/D/I/O | what it does |",
        "|---|---|---|---|",
    ]
    for spec in all_tools():
        rows.append(f"| `{spec.name}` | {_parameters(spec)} | {_flags(spec)} | {_summary(spec)} |")
    rows += ["", END]
    return "\n".join(rows)


def current_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    start = text.index(BEGIN)
    return text[start : text.index(END, start) + len(END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the block in README.md")
    args = parser.parse_args(argv)
    text = README.read_text()
    block = current_block(text)
    if block is None:
        print(f"README.md lacks the markers {BEGIN!r} … {END!r}", file=sys.stderr)
        return 1
    if args.write:
        README.write_text(text.replace(block, render()))
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
