"""The testbed's layout rules (issue 15 item 4).

* Its modules depend on each other one way: no import cycles. Every ``import``/``from ...
  import`` of a ``tests.testbed`` module counts, at module level or inside a function, so a lazy
  import cannot hide a cycle. What starts a component imports the running component, never the
  other way round (``control_plane`` -> ``cluster``, ``mcp_gateway.start`` -> ``.stack``).
* No module exceeds :data:`MAX_LINES`; configuration the components read (kwok resources,
  ``containerd.toml``, nginx's config, the Envoy templates, ...) lives in data files next to the
  code, and every data file a module names (``Path(__file__).with_name(...)``) exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTBED = Path(__file__).parent
PACKAGE = "tests.testbed"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE or node.module.startswith(PACKAGE + "."):
                # ``from pkg import sub`` imports the package and, when it is one, the submodule
                # (names that are not modules are dropped by the caller)
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
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


def too_long(paths: list[Path]) -> dict[str, int]:
    """The modules among ``paths`` over :data:`MAX_LINES` lines, with their line counts."""
    counts = {p.name: len(p.read_text().splitlines()) for p in paths}
    return {name: n for name, n in counts.items() if n > MAX_LINES}


def named_data_files(path: Path) -> list[Path]:
    """The files ``path`` names next to itself: ``Path(__file__).with_name("<file>")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "with_name"
            and isinstance(node.func.value, ast.Call)
            and ast.unparse(node.func.value) == "Path(__file__)"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(path.with_name(node.args[0].value))
    return found


def test_the_testbed_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.provisioners" in graph[f"{PACKAGE}.build"]  # build reads the list
    # the starters import the running components they return
    assert f"{PACKAGE}.cluster" in graph[f"{PACKAGE}.control_plane.start"]
    assert f"{PACKAGE}.mcp_gateway.stack" in graph[f"{PACKAGE}.mcp_gateway.start"]
    assert f"{PACKAGE}.kubelet_node.config" in graph[f"{PACKAGE}.kubelet"]
    assert cycles(graph) == []


def test_no_testbed_module_exceeds_the_line_limit() -> None:
    assert too_long(sorted(TESTBED.rglob("*.py"))) == {}


def test_the_line_limit_check_sees_a_long_module(tmp_path: Path) -> None:
    """Negative control."""
    short, long = tmp_path / "short.py", tmp_path / "long.py"
    short.write_text("x = 1\n" * MAX_LINES)
    long.write_text("x = 1\n" * (MAX_LINES + 1))
    assert too_long([short, long]) == {"long.py": MAX_LINES + 1}


def test_every_named_data_file_exists() -> None:
    named = [f for p in sorted(TESTBED.rglob("*.py")) for f in named_data_files(p)]
    assert TESTBED / "control_plane" / "apiserver-audit-policy.yaml" in named
    assert TESTBED / "kubelet_node" / "containerd.toml" in named
    assert [f for f in named if not f.exists()] == []


def test_the_cycle_check_sees_a_cycle() -> None:
    """Negative control."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
