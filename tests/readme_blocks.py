"""A generated block of README.md between two markers, and the command line that rewrites it
(``python -m tests.readme_options --write``, ``python -m tests.readme_tools --write``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class GeneratedBlock:
    """The README text from ``begin`` to ``end``, markers included, made by ``render``."""

    begin: str
    end: str
    render: Callable[[], str]

    def current(self, text: str) -> str | None:
        if self.begin not in text or self.end not in text:
            return None
        start = text.index(self.begin)
        return text[start : text.index(self.end, start) + len(self.end)]

    def main(self, description: str | None, argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--write", action="store_true", help="rewrite the block in README.md")
        args = parser.parse_args(argv)
        text = README.read_text()
        block = self.current(text)
        if block is None:
            print(f"README.md lacks the markers {self.begin!r} … {self.end!r}", file=sys.stderr)
            return 1
        if args.write:
            README.write_text(text.replace(block, self.render()))
            return 0
        print(self.render())
        return 0
