"""Decisions about identity that must be known before any component starts.

The API servers are configured with their JWT issuers at start, while Keycloak starts in parallel
(its first start is slow), so the Keycloak port, realm issuer URLs and accepted audiences are fixed
up front here and shared by the cluster and Keycloak fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.testbed.ports import free_port

REALM_MCP = "mcp"  # where users log in; cluster A trusts it
REALM_CLUSTER_B = "cluster-b"  # cluster B's own domain; cluster B trusts only this realm
BACKEND_AUDIENCE = "mcp-test/kubernetes-mcp"  # clientId of the backend = x-mcp-servername
SERVER_B_AUDIENCE = "mcp-test/kubernetes-mcp-b"  # the second MCP server (serves cluster B)
CLUSTER_A_AUDIENCES = (BACKEND_AUDIENCE, "cluster-a")
CLUSTER_B_AUDIENCES = ("cluster-b",)


@dataclass(frozen=True)
class IdentityPlan:
    keycloak_port: int
    host: str = "127.0.0.1"

    @property
    def keycloak_url(self) -> str:
        return f"https://{self.host}:{self.keycloak_port}"

    def issuer(self, realm: str) -> str:
        return f"{self.keycloak_url}/realms/{realm}"

    def token_url(self, realm: str) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/token"


def new_plan() -> IdentityPlan:
    return IdentityPlan(keycloak_port=free_port())
