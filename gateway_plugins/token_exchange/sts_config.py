"""Settings of the token services (``sts``: Keycloak realms and the clients this service
authenticates as) and of the targets (``targets``: the audience a server's tokens carry and the
exchange steps, one STS each, that lead there)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from kmg_common.settings import StrictModel


class ClientAuth(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name, not a secret
    PRIVATE_KEY_JWT = "private_key_jwt"


class STSConfig(StrictModel):
    """One token endpoint (a Keycloak realm) and the client this service authenticates as."""

    token_url: str = Field(description="Token endpoint, e.g. https://kc/realms/mcp/protocol/...")
    issuer: str | None = Field(
        default=None,
        description="Realm issuer URL for the readiness probe; derived from token_url if unset.",
    )
    client_id: str = Field(description="This service's client at that realm.")
    client_auth: ClientAuth = Field(
        default=ClientAuth.CLIENT_SECRET_BASIC,
        description="client_secret_basic, client_secret_post or private_key_jwt.",
    )
    client_secret_file: Path | None = Field(default=None, description="File holding the secret.")
    client_secret_env: str | None = Field(default=None, description="Env var holding the secret.")
    private_key_file: Path | None = Field(
        default=None, description="PEM private key for private_key_jwt client authentication."
    )
    private_key_alg: Literal["RS256", "PS256", "ES256"] = Field(
        default="RS256", description="Signing algorithm of the client assertion."
    )
    private_key_kid: str | None = Field(
        default=None, description="'kid' header of the client assertion (key registered there)."
    )
    timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Per-call timeout; a slower STS answers 503."
    )

    @model_validator(mode="after")
    def _auth_material(self) -> STSConfig:
        if self.client_auth is ClientAuth.PRIVATE_KEY_JWT:
            if self.private_key_file is None:
                raise ValueError("client_auth private_key_jwt needs private_key_file")
        elif self.client_secret_file is None and self.client_secret_env is None:
            raise ValueError(
                f"client_auth {self.client_auth.value} needs client_secret_file "
                "or client_secret_env"
            )
        return self

    @property
    def issuer_url(self) -> str:
        if self.issuer:
            return self.issuer
        suffix = "/protocol/openid-connect/token"
        return self.token_url.removesuffix(suffix)


class Grant(StrEnum):
    TOKEN_EXCHANGE = "token_exchange"  # noqa: S105 - RFC 8693 (Keycloak standard token exchange V2)
    JWT_BEARER = "jwt_bearer"  # RFC 7523 JWT authorization grant (Keycloak 26.5+)


class StepConfig(StrictModel):
    """One hop: present the current token at ``sts`` and take the token it issues."""

    sts: str = Field(description="Name of an entry under 'sts'.")
    grant: Grant = Field(
        default=Grant.TOKEN_EXCHANGE,
        description="token_exchange (RFC 8693) or jwt_bearer (RFC 7523, cross-realm hop).",
    )
    audience: list[str] = Field(
        default_factory=list,
        description="token_exchange only: 'audience' values (default: the target's audience).",
    )
    scope: str | None = Field(default=None, description="Space-separated scopes to request.")


class TargetConfig(StrictModel):
    """A token audience callers can ask for, and how to obtain a token for it."""

    audience: str = Field(description="What callers ask for (x-mcp-servername / 'audience').")
    steps: list[StepConfig] = Field(
        default_factory=list, description="Hops in order; empty = pass the caller's token as is."
    )
    expect_audience: str | None = Field(
        default=None,
        description="'aud' the final token must carry (default: audience), checked at the end.",
    )
    skip_when: Literal["aud_contains", "aud_exact", "never"] = Field(
        default="aud_exact",
        description="Forward the caller's token unchanged when its 'aud' is exactly the target "
        "(aud_exact), already contains it among others (aud_contains: the token then reaches "
        "the target with every other audience it carries), or always exchange (never).",
    )
    subject_audiences: list[str] = Field(
        default_factory=list,
        description="The caller's token must carry one of these in 'aud' to get a token for this "
        "target (e.g. the gateway's client id for an MCP server, the backend's for a "
        "cross-domain cluster); empty: any token the validation accepts.",
    )
    allowed_scopes: list[str] = Field(
        default_factory=list,
        description="Scopes a facade caller may request; they replace the last hop's scope.",
    )

    @property
    def final_audience(self) -> str:
        return self.expect_audience or self.audience
