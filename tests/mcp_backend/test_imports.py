"""The backend stands on its own: it imports from ``kmg_common``, never from ``gateway_plugins``."""

from __future__ import annotations

import ast
from pathlib import Path

import mcp_backend

BACKEND = Path(mcp_backend.__file__).parent


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_backend_never_imports_gateway_plugins() -> None:
    sources = sorted(BACKEND.rglob("*.py"))
    assert len(sources) > 20  # the walk found the package (tools/ included)
    offending = {
        f"{path.relative_to(BACKEND)}: {name}"
        for path in sources
        for name in _imported_modules(path)
        if name == "gateway_plugins" or name.startswith("gateway_plugins.")
    }
    assert not offending, sorted(offending)


def test_backend_uses_the_shared_base() -> None:
    imported = {name for path in BACKEND.rglob("*.py") for name in _imported_modules(path)}
    assert {"kmg_common.settings", "kmg_common.logging", "kmg_common.bearer"} <= imported
