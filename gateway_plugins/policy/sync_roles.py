"""``mcp-policy sync-roles``: one Keycloak client role per MCP tool, plus composite roles.

Reads a backend's ``tools/list`` (names and annotations) and makes the client of that server
(``clientId`` = server name, e.g. ``mcp-test/kubernetes-mcp``) hold:

* one role per tool (``pods_list``, or ``tool:pods_list`` with ``--role-prefix tool:``), with a
  description and attributes saying it is managed here and whether the tool is read-only;
* composite ``read-only``: every read-only tool's role (exactly those: a tool that stops being
  read-only leaves it); composite ``all``: every tool's role.

The planner (:func:`plan_sync`) is pure; :class:`KeycloakAdmin` is the only code that talks to
Keycloak's admin REST API. Runs are idempotent: a second run plans nothing. Roles of tools that
no longer exist are removed only with ``prune`` and only when this tool created them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway_plugins.policy.input import normalize_annotations

MANAGED = "mcp-policy.managed"
TOOL_ATTR = "mcp-policy.tool"
READ_ONLY_ATTR = "mcp-policy.read-only"
_MAX_DESCRIPTION = 255


class SyncError(Exception):
    """Sync cannot proceed; the message says what failed and what to do (never a secret)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class RoleSpec:
    """A role as it should be. ``composites`` is None for a plain role."""

    name: str
    description: str
    attributes: dict[str, list[str]]
    composites: frozenset[str] | None = None


@dataclass(frozen=True)
class ExistingRole:
    name: str
    description: str
    attributes: dict[str, list[str]]
    composites: frozenset[str] = frozenset()
    id: str = ""

    @property
    def managed(self) -> bool:
        return self.attributes.get(MANAGED) == ["true"]


@dataclass
class Plan:
    """What a sync would change."""

    create: list[RoleSpec] = field(default_factory=list)
    update: list[tuple[RoleSpec, list[str]]] = field(default_factory=list)
    add_composites: dict[str, set[str]] = field(default_factory=dict)
    remove_composites: dict[str, set[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # would be deleted with prune

    @property
    def empty(self) -> bool:
        return not (
            self.create
            or self.update
            or self.add_composites
            or self.remove_composites
            or self.delete
        )

    def describe(self) -> list[str]:
        lines = [f"+ create role {r.name}" for r in self.create]
        lines += [f"~ update role {r.name}: {', '.join(changes)}" for r, changes in self.update]
        for role, names in sorted(self.add_composites.items()):
            lines += [f"+ composite {role} includes {n}" for n in sorted(names)]
        for role, names in sorted(self.remove_composites.items()):
            lines += [f"- composite {role} drops {n}" for n in sorted(names)]
        lines += [f"- delete role {name}" for name in self.delete]
        lines += [
            f"! role {name} names no current tool (kept; --prune removes it)" for name in self.stale
        ]
        return lines or ["no changes"]

    def as_json(self) -> dict[str, Any]:
        return {
            "create": [r.name for r in self.create],
            "update": {r.name: changes for r, changes in self.update},
            "add_composites": {k: sorted(v) for k, v in sorted(self.add_composites.items())},
            "remove_composites": {k: sorted(v) for k, v in sorted(self.remove_composites.items())},
            "delete": list(self.delete),
            "stale": list(self.stale),
        }


def tools_from_list(tools: Iterable[Mapping[str, Any]]) -> list[ToolSpec]:
    """MCP ``tools/list`` entries → tool specs (read-only from ``annotations.readOnlyHint``)."""
    specs: dict[str, ToolSpec] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            continue
        raw = tool.get("annotations")
        annotations = normalize_annotations(raw if isinstance(raw, Mapping) else None)
        description = tool.get("description")
        specs[name] = ToolSpec(
            name,
            description if isinstance(description, str) else "",
            annotations.get("readOnly") is True,
        )
    return [specs[name] for name in sorted(specs)]


def _summary(text: str) -> str:
    first = text.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    return first


def desired_roles(
    tools: Iterable[ToolSpec],
    *,
    prefix: str = "",
    read_only_role: str = "read-only",
    all_role: str = "all",
) -> dict[str, RoleSpec]:
    """The roles a client should hold for ``tools``."""
    roles: dict[str, RoleSpec] = {}
    read_only: set[str] = set()
    everything: set[str] = set()
    for tool in tools:
        name = f"{prefix}{tool.name}"
        kind = "read-only tool" if tool.read_only else "tool that may change the cluster"
        summary = _summary(tool.description)
        description = f"MCP tool {tool.name} ({kind})" + (f": {summary}" if summary else "")
        roles[name] = RoleSpec(
            name,
            description[:_MAX_DESCRIPTION],
            {
                MANAGED: ["true"],
                TOOL_ATTR: [tool.name],
                READ_ONLY_ATTR: ["true" if tool.read_only else "false"],
            },
        )
        everything.add(name)
        if tool.read_only:
            read_only.add(name)
    for composite, members, text in (
        (read_only_role, read_only, "every read-only MCP tool of this server"),
        (all_role, everything, "every MCP tool of this server"),
    ):
        if composite in roles:
            raise SyncError(f"a tool is named like the composite role {composite!r}; rename one")
        roles[composite] = RoleSpec(
            composite, f"Composite: {text}", {MANAGED: ["true"]}, frozenset(members)
        )
    return roles


def plan_sync(
    desired: Mapping[str, RoleSpec], existing: Mapping[str, ExistingRole], *, prune: bool = False
) -> Plan:
    """The changes that make ``existing`` match ``desired`` (pure)."""
    plan = Plan()
    for name, want in sorted(desired.items()):
        have = existing.get(name)
        if have is None:
            plan.create.append(want)
        else:
            changes = []
            if have.description != want.description:
                changes.append("description")
            if any(have.attributes.get(k) != v for k, v in want.attributes.items()):
                changes.append("attributes")
            if changes:
                plan.update.append((want, changes))
        if want.composites is not None:
            current = have.composites if have is not None else frozenset()
            missing = set(want.composites - current)
            extra = set(current - want.composites)
            if missing:
                plan.add_composites[name] = missing
            if extra:
                plan.remove_composites[name] = extra
    for name, have in sorted(existing.items()):
        if name in desired or not have.managed:
            continue
        (plan.delete if prune else plan.stale).append(name)
    return plan


# ----------------------------------------------------------------------------------------------
# Keycloak admin REST API
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdminCredentials:
    """Password grant of ``admin-cli`` (user) or client credentials of a service account."""

    realm: str = "master"
    client_id: str = "admin-cli"
    username: str | None = None
    password: str | None = None
    client_secret: str | None = None


class KeycloakAdmin:
    """The few admin calls sync-roles needs, over one aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, realm: str, creds: AdminCredentials
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._realm = realm
        self._creds = creds
        self._token: str | None = None

    async def login(self) -> None:
        form = {"client_id": self._creds.client_id}
        if self._creds.client_secret:
            form |= {"grant_type": "client_credentials", "client_secret": self._creds.client_secret}
        elif self._creds.username and self._creds.password:
            form |= {
                "grant_type": "password",
                "username": self._creds.username,
                "password": self._creds.password,
            }
        else:
            raise SyncError("Keycloak admin credentials: give a username and password, or a secret")
        url = (
            f"{self._base}/realms/{quote(self._creds.realm, safe='')}/protocol/openid-connect/token"
        )
        body = await self._send("POST", url, data=form, what="admin login", auth=False)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise SyncError("admin login: Keycloak answered without an access token")
        self._token = token

    def _admin(self, path: str) -> str:
        return f"{self._base}/admin/realms/{quote(self._realm, safe='')}/{path}"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        auth: bool = True,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session.request(
                method, url, json=json_body, data=data, headers=headers, params=params
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    detail = _error_detail(text)
                    refused = resp.status in (401, 403) or (not auth and resp.status == 400)
                    hint = "; check the admin credentials" if refused else ""
                    raise SyncError(f"{what}: Keycloak answered HTTP {resp.status}{detail}{hint}")
                return json.loads(text) if text.strip() else None
        except aiohttp.ClientError as exc:
            raise SyncError(f"{what}: cannot reach Keycloak at {self._base}: {exc}") from None
        except TimeoutError:
            raise SyncError(f"{what}: Keycloak at {self._base} timed out") from None

    async def client_uuid(self, client_id: str) -> str:
        found = await self._send(
            "GET",
            self._admin("clients"),
            params={"clientId": client_id, "search": "false"},
            what=f"find client {client_id}",
        )
        matches = [c for c in found or [] if c.get("clientId") == client_id]
        if not matches:
            raise SyncError(
                f"realm {self._realm} has no client {client_id!r}; create the server's client first"
            )
        return str(matches[0]["id"])

    def _role_path(self, cid: str, role: str = "") -> str:
        tail = f"/{quote(role, safe='')}" if role else ""
        return self._admin(f"clients/{cid}/roles{tail}")

    async def roles(self, cid: str) -> dict[str, ExistingRole]:
        raw = await self._send(
            "GET",
            self._role_path(cid),
            params={"briefRepresentation": "false"},
            what="list client roles",
        )
        roles: dict[str, ExistingRole] = {}
        for rep in raw or []:
            composites: frozenset[str] = frozenset()
            if rep.get("composite"):
                members = await self._send(
                    "GET",
                    self._role_path(cid, rep["name"]) + "/composites",
                    what=f"read composites of {rep['name']}",
                )
                composites = frozenset(
                    m["name"]
                    for m in members or []
                    if m.get("clientRole") and m.get("containerId") == cid
                )
            roles[rep["name"]] = ExistingRole(
                rep["name"],
                rep.get("description") or "",
                {k: list(v) for k, v in (rep.get("attributes") or {}).items()},
                composites,
                rep.get("id", ""),
            )
        return roles

    async def apply(self, cid: str, plan: Plan) -> None:
        for role in plan.create:
            rep = {
                "name": role.name,
                "description": role.description,
                "attributes": role.attributes,
            }
            await self._send(
                "POST", self._role_path(cid), json_body=rep, what=f"create {role.name}"
            )
            # Older Keycloak releases drop attributes on create: set them explicitly.
            await self._send(
                "PUT", self._role_path(cid, role.name), json_body=rep, what=f"set {role.name}"
            )
        for role, _ in plan.update:
            rep = {
                "name": role.name,
                "description": role.description,
                "attributes": role.attributes,
            }
            await self._send(
                "PUT", self._role_path(cid, role.name), json_body=rep, what=f"update {role.name}"
            )
        if plan.add_composites or plan.remove_composites:
            current = await self._send(
                "GET",
                self._role_path(cid),
                params={"briefRepresentation": "true"},
                what="list client roles",
            )
            ids = {r["name"]: r for r in current or []}
            for composite, names in sorted(plan.add_composites.items()):
                reps = [ids[n] for n in sorted(names) if n in ids]
                await self._send(
                    "POST",
                    self._role_path(cid, composite) + "/composites",
                    json_body=reps,
                    what=f"add composites to {composite}",
                )
            for composite, names in sorted(plan.remove_composites.items()):
                reps = [ids[n] for n in sorted(names) if n in ids]
                await self._send(
                    "DELETE",
                    self._role_path(cid, composite) + "/composites",
                    json_body=reps,
                    what=f"remove composites from {composite}",
                )
        for name in plan.delete:
            await self._send("DELETE", self._role_path(cid, name), what=f"delete {name}")


def _error_detail(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("errorMessage") or body.get("error_description") or body.get("error")
        if isinstance(message, str):
            return f" ({message[:200]})"
    return ""


# ----------------------------------------------------------------------------------------------
# reading the backend's tools
# ----------------------------------------------------------------------------------------------
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
