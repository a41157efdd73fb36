"""The README documents every setting of every service with its default (generated block)."""

from __future__ import annotations

from mcp_backend.tools import all_tools
from tests import readme_options, readme_tools
from tests.readme_blocks import README


def test_settings_reference_matches_the_models() -> None:
    text = README.read_text()
    block = readme_options.current_block(text)
    assert block is not None, "README.md lost its settings-reference markers"
    assert block == readme_options.render(), (
        "README.md's settings reference is stale: run `python -m tests.readme_options --write`"
    )


def test_every_setting_appears_in_the_reference() -> None:
    block = readme_options.render()
    for svc in readme_options.SERVICES:
        rows = readme_options.option_rows(svc.model)
        assert rows, svc.title
        for row in rows:
            assert f"`{row.name}`" in block, (svc.title, row.name)


def test_tool_table_matches_the_registry() -> None:
    text = README.read_text()
    block = readme_tools.current_block(text)
    assert block is not None, "README.md lost its tool-table markers"
    assert block == readme_tools.render(), (
        "README.md's tool table is stale: run `python -m tests.readme_tools --write`"
    )
    for spec in all_tools():
        assert f"| `{spec.name}` |" in block, spec.name
