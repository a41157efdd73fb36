"""Shared fixtures. The testbed's session fixtures live in ``tests/testbed/fixtures_*.py`` and are
loaded here as plugins, so every test directory sees the same running components."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"tests.testbed.{p.stem}" for p in (Path(__file__).parent / "testbed").glob("fixtures_*.py")
)
