"""The testbed's modules depend on each other one way: no import cycles (issue 15 item 4).

Every ``import``/``from ... import`` of a ``tests.testbed`` module counts, at module level or
inside a function, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTBED = Path(__file__).parent
PACKAGE = "tests.testbed"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found |= {f"{PACKAGE}.{a.name}" for a in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {
        f"{PACKAGE}." + ".".join(p.relative_to(TESTBED).with_suffix("").parts): p
        for p in TESTBED.rglob("*.py")
        if not p.name.startswith("test_")
    }
    modules = {name.removesuffix(".__init__"): p for name, p in modules.items()}
    return {name: _imports(p) & set(modules) - {name} for name, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once, found by depth-first search (white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_testbed_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.provisioners" in graph[f"{PACKAGE}.build"]  # build reads the list
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    """Negative control."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
