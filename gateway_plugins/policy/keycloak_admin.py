"""The few Keycloak admin REST calls ``mcp-policy sync-roles`` needs (the only code of it that
talks to Keycloak): log in, find the client, read its roles, apply a :class:`~.role_plan.Plan`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway_plugins.policy.role_plan import (
    ExistingRole,
    Plan,
    SyncError,
)


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
