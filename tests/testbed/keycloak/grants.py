"""OAuth grants at Keycloak's token endpoint, as the tests ask for tokens: the resource-owner
password grant of a test client, the standard token exchange (RFC 8693) and the JWT authorization
grant (RFC 7523); a refusal raises :class:`TokenError` (Keycloak's OAuth error, never a token)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from tests.testbed.identity_plan import REALM_MCP

# Demo-only credentials (see manifests/keycloak/README.md). Never use them outside the testbed.
GATEWAY_CLIENT_ID = "mcp-gateway"
GATEWAY_CLIENT_SECRET = "mcp-gateway-secret-demo-only"
TEST_CLIENT_ID = "mcp-cli"  # public client with direct access grants (tests get user tokens)
CLUSTER_B_CLIENT_ID = "mcp-gateway"  # realm cluster-b: confidential client for the JWT grant
CLUSTER_B_CLIENT_SECRET = "cluster-b-gateway-secret-demo-only"


class TokenError(RuntimeError):
    """Keycloak refused a token request; carries the OAuth error (never the token)."""

    def __init__(self, status: int, body: Mapping[str, Any], what: str) -> None:
        self.status = status
        self.error = str(body.get("error", ""))
        self.description = str(body.get("error_description", ""))
        super().__init__(f"{what}: HTTP {status} {self.error}: {self.description}")


class TokenGrants:
    """The grants of a Keycloak server (mixed into :class:`~.server.Keycloak`, which gives
    :meth:`token_url` and :meth:`ssl_context`)."""

    def token_url(self, realm: str = REALM_MCP) -> str:
        raise NotImplementedError

    def ssl_context(self) -> ssl.SSLContext:
        raise NotImplementedError

    def post_form(
        self,
        url: str,
        form: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        basic: tuple[str, str] | None = None,
        what: str = "token request",
    ) -> dict[str, Any]:
        """POST a form (pairs keep repeated keys, e.g. several ``audience``); JSON answer.

        Raises :class:`TokenError` with Keycloak's OAuth error on a non-2xx answer.
        """
        pairs = list(form.items()) if isinstance(form, Mapping) else list(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic:
            raw = f"{urllib.parse.quote(basic[0], safe='')}:{urllib.parse.quote(basic[1], safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
        req = urllib.request.Request(  # noqa: S310 - testbed URL
            url, data=urllib.parse.urlencode(pairs).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context()) as resp:  # noqa: S310
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            raw_body = err.read()
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = {
                    "error": "non-json",
                    "error_description": raw_body[:200].decode(errors="replace"),
                }
            raise TokenError(err.code, body, what) from None

    def user_token(
        self,
        username: str,
        password: str,
        *,
        realm: str = REALM_MCP,
        client_id: str = TEST_CLIENT_ID,
        client_secret: str | None = None,
        scope: str = "openid",
    ) -> str:
        """An access token for ``username`` (resource-owner password grant of a test client)."""
        form = {
            "grant_type": "password",
            "username": username,
            "password": password,
            "client_id": client_id,
            "scope": scope,
        }
        basic = (client_id, client_secret) if client_secret else None
        if basic:
            form.pop("client_id")
        body = self.post_form(
            self.token_url(realm),
            form,
            basic=basic,
            what=f"password grant for {username} at realm {realm}",
        )
        return str(body["access_token"])

    def exchange(
        self,
        subject_token: str,
        *,
        audience: str | Iterable[str] | None = None,
        scope: str | None = None,
        realm: str = REALM_MCP,
        client_id: str = GATEWAY_CLIENT_ID,
        client_secret: str = GATEWAY_CLIENT_SECRET,
    ) -> dict[str, Any]:
        """Standard token exchange (RFC 8693, Keycloak V2) by a confidential client."""
        form: list[tuple[str, str]] = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject_token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ]
        if isinstance(audience, str):
            form.append(("audience", audience))
        elif audience is not None:
            form += [("audience", a) for a in audience]
        if scope:
            form.append(("scope", scope))
        return self.post_form(
            self.token_url(realm),
            form,
            basic=(client_id, client_secret),
            what=f"token exchange at realm {realm}",
        )

    def jwt_bearer(
        self,
        assertion: str,
        *,
        realm: str,
        client_id: str = CLUSTER_B_CLIENT_ID,
        client_secret: str = CLUSTER_B_CLIENT_SECRET,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """JWT authorization grant (RFC 7523) at ``realm`` with ``assertion`` as the grant."""
        form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ]
        if scope:
            form.append(("scope", scope))
        return self.post_form(
            self.token_url(realm),
            form,
            basic=(client_id, client_secret),
            what=f"JWT authorization grant at realm {realm}",
        )


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT without verifying it (tests inspect tokens Keycloak just issued)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
