"""Golden ``tools/list`` snapshots per tool selection, in process: no testbed, about a second.

The backend's MCP server is driven by the real ``mcp`` client connected in process (the SDK's
in-memory transport), one snapshot per selection a deployment can make: the default,
``read_only`` and ``disable_destructive``. Listing tools reaches no cluster, so the cluster here
is a name and an address nothing listens on. The default snapshot is the same file as the
testbed test's (``test_protocol.py``), which lists through Streamable HTTP and the auth layer:
both must agree. ``KMG_UPDATE_GOLDEN=1`` rewrites the snapshots after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mcp.client.client import Client

from mcp_backend.app import create_backend
from mcp_backend.config import Settings
from mcp_backend.server import build_server

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
SELECTIONS: dict[str, dict[str, Any]] = {
    "tools_list.json": {},
    "tools_list_read_only.json": {"read_only": True},
    "tools_list_disable_destructive.json": {"disable_destructive": True},
}


async def listed(**selection: Any) -> list[dict[str, Any]]:
    settings = Settings.model_validate(
        {
            "clusters": [{"name": "snapshot", "server": "https://127.0.0.1:1", "default": True}],
            **selection,
        }
    )
    backend = create_backend(settings)
    async with Client(build_server(backend.handlers)) as client:
        tools = (await client.list_tools()).tools
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


@pytest.mark.parametrize("golden", list(SELECTIONS))
async def test_tools_list_matches_its_snapshot(golden: str) -> None:
    current = await listed(**SELECTIONS[golden])
    path = GOLDEN_DIR / golden
    if os.environ.get("KMG_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert current == expected, (
        f"tools/list ({golden}) changed: review, then regenerate with KMG_UPDATE_GOLDEN=1"
    )


async def test_the_selections_differ_as_their_annotations_say() -> None:
    """The snapshots are not three copies: each selection drops exactly the tools its
    annotation names, and keeps the rest unchanged."""
    everything = {t["name"]: t for t in await listed()}
    read_only = {t["name"] for t in await listed(read_only=True)}
    safe = {t["name"] for t in await listed(disable_destructive=True)}
    assert read_only == {n for n, t in everything.items() if t["annotations"]["readOnlyHint"]}
    assert safe == {n for n, t in everything.items() if not t["annotations"]["destructiveHint"]}
    assert read_only < safe < set(everything)
