"""``mcp-policy sync-roles``: one Keycloak client role per MCP tool, plus composite roles.

Reads a backend's ``tools/list`` (names and annotations) and makes the client of that server
(``clientId`` = server name, e.g. ``mcp-test/kubernetes-mcp``) hold:

* one role per tool (``pods_list``, or ``tool:pods_list`` with ``--role-prefix tool:``), with a
  description and attributes saying it is managed here and whether the tool is read-only;
* composite ``read-only``: every read-only tool's role (exactly those: a tool that stops being
  read-only leaves it); composite ``all``: every tool's role.

The planner (:mod:`.role_plan`) is pure; :class:`~.keycloak_admin.KeycloakAdmin` is the only
code that talks to Keycloak's admin REST API; this module reads the backend's tools and runs the
sync. Runs are idempotent: a second run plans nothing. Roles of tools that no longer exist are
removed only with ``prune`` and only when this tool created them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway_plugins.policy.keycloak_admin import KeycloakAdmin
from gateway_plugins.policy.role_plan import Plan, SyncError, ToolSpec, desired_roles, plan_sync


def tools_from_file(path: Path) -> list[dict[str, Any]]:
    """A JSON file: a tools/list result (``{"tools": [...]}``), a JSON-RPC answer, or a list."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SyncError(f"cannot read tools file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SyncError(f"tools file {path} is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        doc = doc["result"]
    if isinstance(doc, dict):
        doc = doc.get("tools")
    if not isinstance(doc, list):
        raise SyncError(f"tools file {path}: expected a tools/list result with a 'tools' list")
    return [t for t in doc if isinstance(t, dict)]


async def tools_from_backend(
    url: str, token: str | None, *, ca_file: Path | None = None, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The backend's complete tools/list over MCP Streamable HTTP (the real MCP client)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from gateway_plugins.common.http_client import make_ssl_context

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tools: list[dict[str, Any]] = []
    try:
        async with (
            httpx2.AsyncClient(
                headers=headers, timeout=timeout_s, verify=make_ssl_context(ca_file)
            ) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools += [t.model_dump(by_alias=True, exclude_none=True) for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
    except Exception as exc:  # the MCP client raises many kinds; report one clear line
        cause = _innermost(exc)
        hint = ""
        if token is None:
            hint = " (if the backend needs a bearer token, pass --backend-token-env)"
        raise SyncError(
            f"cannot read tools/list from {url}: {type(cause).__name__}: {str(cause)[:200]}{hint}"
        ) from None
    return tools


def _innermost(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (anyio task groups wrap the real error)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def sync_roles(
    admin: KeycloakAdmin,
    client_id: str,
    tools: list[ToolSpec],
    *,
    prefix: str = "",
    read_only_role: str = "read-only",
    all_role: str = "all",
    prune: bool = False,
    dry_run: bool = False,
) -> Plan:
    """Plan, and unless ``dry_run`` apply, the roles of ``client_id`` for ``tools``."""
    if not tools:
        raise SyncError("the backend listed no tools: refusing to sync (nothing would be granted)")
    await admin.login()
    cid = await admin.client_uuid(client_id)
    desired = desired_roles(tools, prefix=prefix, read_only_role=read_only_role, all_role=all_role)
    plan = plan_sync(desired, await admin.roles(cid), prune=prune)
    if not dry_run and not plan.empty:
        await admin.apply(cid, plan)
    return plan
