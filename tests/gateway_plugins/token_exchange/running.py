"""Run the real token exchange service against the testbed's Keycloak (tests and bench).

``service_settings`` is the configuration a deployment next to the testbed's Keycloak would use;
``running_service`` serves ``create_app(settings)`` on 127.0.0.1 until the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import IssuerConfig
from gateway_plugins.common.service import serve
from gateway_plugins.token_exchange.app import create_app
from gateway_plugins.token_exchange.config import (
    BreakerConfig,
    ExtAuthzConfig,
    FacadeClient,
    FacadeConfig,
    Settings,
    ValidationConfig,
)
from gateway_plugins.token_exchange.service import RUNTIME, Runtime
from gateway_plugins.token_exchange.sts_config import StepConfig, STSConfig, TargetConfig
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_CLUSTER_B, REALM_MCP
from tests.testbed.ports import free_port

FACADE_CLIENT_ID = "mcp-backend"
FACADE_CLIENT_SECRET = "facade-secret-test-only"
REFUSED_TARGET = "refused-by-keycloak"  # a target whose exchange Keycloak refuses
CLUSTER_B_TARGET = "cluster-b"
GATEWAY_AUDIENCE = "mcp-gateway"  # what user tokens (client mcp-cli) are addressed to
# The gateway's credential at /check and /ext-authz/* (caller_auth); tests playing the gateway
# send CALLER_HEADERS.
CALLER_HEADER = "x-kmg-caller-secret"
CALLER_SECRET = "caller-secret-test-only"  # test-only credential
CALLER_HEADERS = {CALLER_HEADER: CALLER_SECRET}


def service_settings(keycloak: kc.Keycloak, secrets_dir: Path, **overrides: object) -> Settings:
    """Settings for the testbed: secrets written to files (never inline), as in production."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "mcp": (keycloak.gateway_client_secret, "sts-mcp.secret"),
        "cluster-b": (kc.CLUSTER_B_CLIENT_SECRET, "sts-cluster-b.secret"),
        "facade": (FACADE_CLIENT_SECRET, "facade.secret"),
        "caller": (CALLER_SECRET, "caller.secret"),
    }
    paths: dict[str, Path] = {}
    for name, (secret, filename) in files.items():
        path = secrets_dir / filename
        path.write_text(secret + "\n")
        path.chmod(0o600)
        paths[name] = path
    settings = Settings(
        ca_file=keycloak.ca_file,
        # user tokens are addressed to the gateway; the backend's (exchanged) tokens reach /token
        validation=ValidationConfig(
            issuers=[
                IssuerConfig(
                    issuer=keycloak.issuer(REALM_MCP),
                    audiences=[GATEWAY_AUDIENCE, BACKEND_AUDIENCE],
                )
            ]
        ),
        sts={
            "mcp": STSConfig(
                token_url=keycloak.token_url(REALM_MCP),
                client_id=keycloak.gateway_client_id,
                client_secret_file=paths["mcp"],
            ),
            "cluster-b": STSConfig(
                token_url=keycloak.token_url(REALM_CLUSTER_B),
                client_id=kc.CLUSTER_B_CLIENT_ID,
                client_secret_file=paths["cluster-b"],
            ),
        },
        targets=[
            # Keycloak's user tokens carry every audience the user has roles for; "aud_exact"
            # narrows them to the one backend (least privilege) unless already narrow.
            TargetConfig(
                audience=BACKEND_AUDIENCE,
                steps=[StepConfig(sts="mcp")],
                skip_when="aud_exact",
                subject_audiences=[GATEWAY_AUDIENCE],
            ),
            TargetConfig(
                audience="cluster-a", steps=[StepConfig(sts="mcp")], skip_when="aud_exact"
            ),
            # Cross-domain: hop 1 narrows to realm cluster-b's issuer URL at realm mcp (standard
            # token exchange), hop 2 is the JWT authorization grant at realm cluster-b.
            TargetConfig(
                audience=CLUSTER_B_TARGET,
                steps=[
                    StepConfig(sts="mcp", audience=[keycloak.issuer(REALM_CLUSTER_B)]),
                    StepConfig(sts="cluster-b", grant="jwt_bearer"),  # type: ignore[arg-type]
                ],
            ),
            TargetConfig(
                audience=REFUSED_TARGET,
                steps=[StepConfig(sts="mcp", audience=["no-such-client"])],
                skip_when="never",
            ),
        ],
        facade=FacadeConfig(
            clients=[FacadeClient(client_id=FACADE_CLIENT_ID, client_secret_file=paths["facade"])]
        ),
        breaker=BreakerConfig(failures=3, cooldown_s=1.0),
        # the checks route the backend and cluster A; cluster B (cross-domain) is /token only
        ext_authz=ExtAuthzConfig(
            targets=[BACKEND_AUDIENCE, "cluster-a", REFUSED_TARGET],
            audiences=[GATEWAY_AUDIENCE],
        ),
        caller_auth=CallerAuthConfig(header=CALLER_HEADER, secret_file=paths["caller"]),
    )
    return settings.model_copy(update=overrides)


@dataclass
class RunningService:
    url: str
    app: web.Application

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    def sts_calls(self, sts: str | None = None) -> float:
        return self.runtime.metrics.sts_call_count(sts)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    app = create_app(settings)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop, shutdown_timeout=2.0))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            if task.done():
                await task  # surfaces a start failure
            try:
                async with client.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
    try:
        yield RunningService(url, app)
    finally:
        stop.set()
        await task
