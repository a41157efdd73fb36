"""Run the real policy service against the testbed's Keycloak (tests and bench).

``policy_settings`` is the configuration a deployment next to the testbed's Keycloak would use;
``running_policy`` serves ``create_app(settings)`` on 127.0.0.1 until the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway_plugins.common.caller_auth import CallerAuthConfig
from gateway_plugins.common.jwt_validation import IssuerConfig
from gateway_plugins.common.service import serve
from gateway_plugins.policy.app import create_app
from gateway_plugins.policy.config import (
    AuthSettings,
    OpaSettings,
    PolicySettings,
    WristbandSettings,
)
from gateway_plugins.policy.decision_log import DecisionLog
from gateway_plugins.policy.engine_guard import EmbeddedVerifySettings
from gateway_plugins.policy.service import service_of
from gateway_plugins.policy.wristband import generate_signing_key, private_key_pem
from tests.testbed import build
from tests.testbed import keycloak as kc
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.paths import REPO_ROOT
from tests.testbed.ports import free_port

POLICIES = REPO_ROOT / "policies"
SERVER = "mcp-test/kubernetes-mcp"  # = BACKEND_AUDIENCE, the server's Keycloak client
GATEWAY_AUDIENCE = "mcp-gateway"  # what user tokens (client mcp-cli) are addressed to
# The gateway's credential at /check, /v1/decide, /v1/filter (caller_auth); tests playing the
# gateway send CALLER_HEADERS.
CALLER_HEADER = "x-kmg-caller-secret"
# test-only; the same as the token exchange tests' (one shared secret, as deployed)
CALLER_SECRET = "caller-secret-test-only"
CALLER_HEADERS = {CALLER_HEADER: CALLER_SECRET}


def verified_by_opa() -> EmbeddedVerifySettings:
    """The embedded engine checked against the testbed's real OPA on the repo's corpus at every
    load: how a policy that changes at run time (a watched ConfigMap, a bundle) passes the
    engine guard when its volume carries no verification record of the new modules."""
    return EmbeddedVerifySettings(
        opa_binary=build.binary("opa"), corpus_files=[POLICIES / "mcp/testdata/corpus.json"]
    )


# The tools of the testbed's backend (names and annotations as in the tool catalogue).
READ_ONLY_TOOLS = (
    "configuration_contexts_list", "configuration_view", "events_list", "namespaces_list",
    "nodes_log", "nodes_stats_summary", "nodes_top", "pods_list", "pods_list_in_namespace",
    "pods_get", "pods_top", "pods_log", "resources_list", "resources_get", "helm_list",
)  # fmt: skip
CHANGING_TOOLS = (
    "pods_delete", "pods_exec", "pods_run", "resources_create_or_update", "resources_delete",
    "resources_scale", "helm_install", "helm_uninstall",
)  # fmt: skip


def catalogue_doc() -> dict[str, Any]:
    """``{server: [MCP tool]}`` with MCP annotations, as the backend's tools/list gives them."""
    tools = [
        {"name": n, "annotations": {"readOnlyHint": True, "destructiveHint": False}}
        for n in READ_ONLY_TOOLS
    ] + [{"name": n, "annotations": {"readOnlyHint": False}} for n in CHANGING_TOOLS]
    return {SERVER: tools, "team-a/other-mcp": [{"name": "pods_list", "annotations": {}}]}


def write_key(path: Path) -> Path:
    path.write_bytes(private_key_pem(generate_signing_key()))
    path.chmod(0o600)
    return path


def policy_settings(
    keycloak: kc.Keycloak,
    work: Path,
    *,
    engine: str = "embedded",
    opa_url: str | None = None,
    data_dirs: list[Path] | None = None,
    leeway_s: float = 30.0,
    **overrides: Any,
) -> PolicySettings:
    """Settings for the testbed: the repo's policies, a fresh signing key, the test catalogue."""
    work.mkdir(parents=True, exist_ok=True)
    catalogue = work / "catalogue.json"
    catalogue.write_text(json.dumps(catalogue_doc()))
    key = work / "wristband.pem"
    if not key.exists():
        write_key(key)
    caller = work / "caller.secret"
    caller.write_text(CALLER_SECRET + "\n")
    caller.chmod(0o600)
    overrides.setdefault("caller_auth", CallerAuthConfig(header=CALLER_HEADER, secret_file=caller))
    return PolicySettings(
        port=free_port(),
        engine=engine,  # type: ignore[arg-type]
        policies_dir=POLICIES,
        data_dirs=data_dirs,
        catalogue_file=catalogue,
        opa=OpaSettings(url=opa_url or "http://127.0.0.1:1", timeout_s=1.0),
        auth=AuthSettings(
            issuers=[
                IssuerConfig(
                    issuer=keycloak.issuer(REALM_MCP), audiences=[GATEWAY_AUDIENCE, SERVER]
                )
            ],
            ca_file=keycloak.ca_file,
            leeway_s=leeway_s,
        ),
        wristband=WristbandSettings(signing_key_file=key, **overrides.pop("wristband", {})),
        decision_log=str(work / "decisions.jsonl"),
        **overrides,
    )


@dataclass
class RunningPolicy:
    settings: PolicySettings
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def decision_log(self) -> Path:
        assert self.settings.decision_log is not None
        return Path(self.settings.decision_log)

    @property
    def public_key_pem(self) -> str:
        signer = service_of(self.app).signer
        assert signer is not None
        return signer.public_key_pem


@contextlib.asynccontextmanager
async def running_policy(
    settings: PolicySettings, *, decision_log: DecisionLog | None = None
) -> AsyncIterator[RunningPolicy]:
    app = create_app(settings, decision_log=decision_log)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.host, settings.port, stop, shutdown_timeout=2))
    running = RunningPolicy(settings, app)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                if task.done():
                    task.result()  # raises the start-up error
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{running.url}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError("the policy service did not start within 8s")
        yield running
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def running_backend() -> AsyncIterator[str]:
    """The real MCP backend (uvicorn, free port) → its MCP URL. Its one cluster entry points
    nowhere: listing tools touches no cluster, which is all sync-roles needs."""
    import uvicorn

    from mcp_backend.app import create_backend
    from mcp_backend.config import Settings

    settings = Settings.model_validate(
        {"clusters": [{"name": "a", "server": "https://127.0.0.1:9", "default": True}]}
    )
    port = free_port()

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # pytest owns the signal handlers
            yield

    server = _Server(
        uvicorn.Config(
            create_backend(settings).app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the backend did not start within 10s")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
