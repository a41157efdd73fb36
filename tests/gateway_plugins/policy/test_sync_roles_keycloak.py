"""``mcp-policy sync-roles`` end to end: the real CLI reads the real backend's tools/list and
manages roles in the testbed's real Keycloak, on a client created for this test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_plugins.policy.role_plan import MANAGED
from tests.gateway_plugins.policy.running import READ_ONLY_TOOLS, running_backend
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP

pytestmark = pytest.mark.timeout(600)


def _admin(keycloak: Any, method: str, path: str, body: Any = None) -> Any:
    """``method /admin/realms/mcp/<path>`` as the testbed's Keycloak admin."""
    return keycloak.admin_request(method, f"realms/{REALM_MCP}/{path}", body)


@pytest.fixture
def server_client(keycloak: Any) -> Iterator[tuple[str, str]]:
    """A fresh client named like an MCP server: (clientId, internal id); deleted afterwards."""
    client_id = f"policy-sync-{uuid.uuid4().hex[:8]}/kubernetes-mcp"
    _admin(keycloak, "POST", "clients", {"clientId": client_id, "publicClient": False})
    query = urllib.parse.urlencode({"clientId": client_id})
    cid = _admin(keycloak, "GET", f"clients?{query}")[0]["id"]
    try:
        yield client_id, cid
    finally:
        _admin(keycloak, "DELETE", f"clients/{cid}")


async def _sync(
    keycloak: Any, client_id: str, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (in a thread: the backend serves on this event loop)."""
    env = dict(os.environ, KMG_TEST_KC_ADMIN_PASSWORD=kc.ADMIN_PASSWORD)
    if token:
        env["KMG_TEST_BACKEND_TOKEN"] = token
    argv = [
        sys.executable, "-m", "gateway_plugins.policy.cli", "sync-roles",
        "--keycloak-url", keycloak.url, "--realm", REALM_MCP, "--client", client_id,
        "--admin-user", kc.ADMIN_USERNAME, "--admin-password-env", "KMG_TEST_KC_ADMIN_PASSWORD",
        "--ca-file", str(keycloak.ca_file), "--json", *args,
    ]  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _plan(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def _roles(keycloak: Any, cid: str) -> dict[str, dict[str, Any]]:
    return {
        r["name"]: r
        for r in _admin(keycloak, "GET", f"clients/{cid}/roles?briefRepresentation=false")
    }


def _composites(keycloak: Any, cid: str, role: str) -> set[str]:
    path = f"clients/{cid}/roles/{urllib.parse.quote(role, safe='')}/composites"
    return {r["name"] for r in _admin(keycloak, "GET", path)}


async def test_sync_roles_creates_then_changes_nothing(
    keycloak: Any, server_client: tuple[str, str], tmp_path: Path
) -> None:
    client_id, cid = server_client
    token = await keycloak.auser_token("mcp", "mcp")
    async with running_backend() as backend_url:
        source = ("--backend-url", backend_url, "--backend-token-env", "KMG_TEST_BACKEND_TOKEN")
        dry = _plan(await _sync(keycloak, client_id, *source, "--dry-run", token=token))
        assert dry["dry_run"] is True
        assert _roles(keycloak, cid) == {}  # a dry run changes nothing
        tools = sorted(set(dry["create"]) - {"read-only", "all"})
        assert set(READ_ONLY_TOOLS) <= set(tools)
        assert "pods_delete" in tools

        first = _plan(await _sync(keycloak, client_id, *source, token=token))
        assert sorted(first["create"]) == sorted([*tools, "read-only", "all"])
        roles = _roles(keycloak, cid)
        assert set(roles) == {*tools, "read-only", "all"}
        assert roles["pods_list"]["attributes"][MANAGED] == ["true"]
        assert roles["pods_list"]["description"].startswith("MCP tool pods_list (read-only tool)")
        read_only = _composites(keycloak, cid, "read-only")
        assert set(READ_ONLY_TOOLS) <= read_only
        assert "pods_delete" not in read_only
        assert "pods_exec" not in read_only
        assert _composites(keycloak, cid, "all") == set(tools)

        second = _plan(await _sync(keycloak, client_id, *source, token=token))
        changes = ("create", "update", "add_composites", "remove_composites", "delete", "stale")
        assert [key for key in changes if second[key]] == []

        # Without a token the backend refuses, and the CLI says so in one line.
        refused = await _sync(keycloak, client_id, "--backend-url", backend_url)
        assert refused.returncode == 1
        assert "cannot read tools/list" in refused.stderr
        assert "Traceback" not in refused.stderr

    # Tools disappear: kept (and reported) unless --prune; composites follow at once.
    fewer = tmp_path / "tools.json"
    fewer.write_text(json.dumps({"tools": [
        {"name": "pods_list", "annotations": {"readOnlyHint": True}},
        {"name": "pods_delete", "annotations": {"readOnlyHint": False}},
    ]}))  # fmt: skip
    kept = _plan(await _sync(keycloak, client_id, "--tools-file", str(fewer)))
    assert "pods_get" in kept["stale"]
    assert kept["delete"] == []
    assert "pods_get" in _roles(keycloak, cid)
    assert _composites(keycloak, cid, "read-only") == {"pods_list"}
    pruned = _plan(await _sync(keycloak, client_id, "--tools-file", str(fewer), "--prune"))
    assert "pods_get" in pruned["delete"]
    assert set(_roles(keycloak, cid)) == {"pods_list", "pods_delete", "read-only", "all"}
    assert (
        _plan(await _sync(keycloak, client_id, "--tools-file", str(fewer), "--prune"))["delete"]
        == []
    )


async def test_sync_roles_reports_a_missing_client_and_bad_credentials(
    keycloak: Any, tmp_path: Path
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": [{"name": "pods_list"}]}))
    missing = await _sync(keycloak, "no-such/server", "--tools-file", str(tools))
    assert missing.returncode == 1
    assert "has no client 'no-such/server'" in missing.stderr
    env = dict(os.environ, KMG_TEST_KC_ADMIN_PASSWORD="wrong")
    argv = [
        sys.executable, "-m", "gateway_plugins.policy.cli", "sync-roles",
        "--keycloak-url", keycloak.url, "--realm", REALM_MCP, "--client", "x/y",
        "--tools-file", str(tools), "--admin-user", kc.ADMIN_USERNAME,
        "--admin-password-env", "KMG_TEST_KC_ADMIN_PASSWORD", "--ca-file", str(keycloak.ca_file),
    ]  # fmt: skip
    bad = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert bad.returncode == 1
    assert "admin login: Keycloak answered HTTP 400 (Invalid user credentials)" in bad.stderr
    assert "check the admin credentials" in bad.stderr
    assert "wrong" not in bad.stderr
