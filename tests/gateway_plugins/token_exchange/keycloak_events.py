"""Keycloak's own record of token exchanges (admin events API): the independent count of how
many exchanges Keycloak performed, per login session."""

from __future__ import annotations

import urllib.parse

from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP


def enable_exchange_events(keycloak: kc.Keycloak, realm: str = REALM_MCP) -> None:
    config = keycloak.admin_get(f"realms/{realm}/events/config")
    types = set(config.get("enabledEventTypes") or []) | {"TOKEN_EXCHANGE", "TOKEN_EXCHANGE_ERROR"}
    config.update({"eventsEnabled": True, "enabledEventTypes": sorted(types)})
    keycloak.admin_request("PUT", f"realms/{realm}/events/config", config)


def exchange_events(
    keycloak: kc.Keycloak, user_id: str, session_id: str, realm: str = REALM_MCP
) -> int:
    """TOKEN_EXCHANGE events of one user's login session (one subject token lineage)."""
    query = urllib.parse.urlencode({"type": "TOKEN_EXCHANGE", "user": user_id, "max": 10000})
    events = keycloak.admin_get(f"realms/{realm}/events?{query}")
    return sum(1 for e in events if e.get("sessionId") == session_id)
