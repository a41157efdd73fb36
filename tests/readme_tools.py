"""The README's tool table, generated from the backend's tool registry (names, parameters,
annotations, first sentence of each description).

``python -m tests.readme_tools --write`` rewrites the block between the markers in README.md;
``tests/test_readme.py`` fails when the README and the registry disagree.
"""

from __future__ import annotations

import re
import sys

from mcp_backend.tools import all_tools
from mcp_backend.tools.base import ToolSpec
from tests.readme_blocks import GeneratedBlock

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


BLOCK = GeneratedBlock(BEGIN, END, render)
current_block = BLOCK.current


def main(argv: list[str] | None = None) -> int:
    return BLOCK.main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
