"""The local gateway with the REAL Authorino as its auth layer, configured from the Kuadrant
overlay (``manifests/overlays/kuadrant``): the e2e fixture ``authorino_gateway``.

What starts, next to a running testbed (Keycloak, clusters A and B):

1. the AuthConfig CRD and namespace ``kmg-authorino`` on cluster A, then ``authorino server``
   watching that namespace (``tests/testbed/authorino.py``);
2. our services, the real MCP Gateway broker/router and Envoy through :func:`start_gateway`, with
   Authorino as the auth layer (one gRPC ext_authz filter instead of our two HTTP ext_authz
   filters, :func:`.envoy_auth.authorino_auth`), the ``/token`` facade client ``authorino`` the
   overlay authenticates as, and the policy service signing both tool-list header forms (as
   ``manifests/base`` configures it);
3. the overlay's two AuthPolicies translated into AuthConfigs as Kuadrant does
   (``tests/testbed/kuadrant_authconfig.py``), the ``sharedSecretRef`` Secrets (the facade
   client's HTTP Basic credentials; the gateway's caller secret for the policy service), all
   applied and reported ready by Authorino.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import authorino as authorino_mod
from tests.testbed import keycloak as kc
from tests.testbed import process
from tests.testbed.authorino import Authorino
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import REALM_MCP
from tests.testbed.kuadrant_authconfig import Environment, OverlayMismatch, overlay_authconfigs
from tests.testbed.mcp_gateway.envoy_auth import AuthLayer, authorino_auth
from tests.testbed.mcp_gateway.stack import LocalGateway, Progress, _quiet, _run_async
from tests.testbed.mcp_gateway.start import start_gateway
from tests.testbed.ports import free_port

SUBDIR = "authorino-gateway"
NAMESPACE = "kmg-authorino"  # Authorino's namespace (kuadrant-system in a Kuadrant install)
# The overlay's AuthPolicies -> the AuthConfig name = host key the Envoy route names: the backend
# policy on the servers' routes (tools/call, prompts/get, the router's hairpin initialize), the
# broker policy on /mcp of the gateway host.
BACKEND_POLICY = "kubernetes-mcp"
BROKER_POLICY = "mcp-broker-tool-list"
AUTHCONFIG_HOSTS = {BACKEND_POLICY: "kmg-backend-route", BROKER_POLICY: "kmg-broker-route"}
# The /token facade client the overlay's `exchange` metadata call authenticates as (demo-only).
FACADE_CLIENT_ID = "authorino"
FACADE_CLIENT_SECRET = "authorino-facade-secret-demo-only"  # test-only credential
# sharedSecretRef of the overlay -> what it must hold: base64("authorino:<secret>") (see overlay)
SHARED_SECRET = ("kmg-token-exchange-client", "authorization")
# issue 14: the overlay's policy calls present the gateway's caller secret (policy caller_auth)
CALLER_SECRET_REF = ("kmg-policy-caller", "secret")
SERVED_TIMEOUT = 60.0
PROBE_TOOL = "configuration_contexts_list"  # answers without calling any API server


@dataclass
class AuthorinoGateway:
    """The running gateway; ``mcp_url`` is Envoy's ``/mcp``, ``services`` our processes."""

    gateway: LocalGateway
    authorino: Authorino
    authconfigs: dict[str, dict[str, Any]]  # AuthPolicy name -> applied AuthConfig
    statuses: list[dict[str, Any]] = field(default_factory=list)
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def mcp_url(self) -> str:
        return self.gateway.mcp_url

    @property
    def services(self) -> Mapping[str, Any]:
        return self.gateway.services

    def user_token(self, username: str) -> str:
        return self.gateway.user_token(username)

    def restart_authorino(self, timeout: float = SERVED_TIMEOUT) -> float:
        """Start Authorino again (fault tests) and wait until it serves both AuthConfigs."""
        started = time.monotonic()
        self.authorino.start(timeout)
        wait_served(
            self.mcp_url, self.authorino, self._probe_token, self.gateway.tool(PROBE_TOOL), timeout
        )
        seconds = time.monotonic() - started
        self.startup_seconds["authorino_restart"] = seconds
        return seconds

    def _probe_token(self) -> str:
        return self.gateway.user_token("mcp")

    def stop(self) -> None:
        self.gateway.stop()
        self.authorino.stop()


def _post(
    url: str, body: dict[str, Any], headers: Mapping[str, str]
) -> tuple[int, dict[str, str], str]:
    """One JSON-RPC POST: status, headers (lower-case names) and body text."""
    data = json.dumps(body).encode()
    all_headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        **headers,
    }
    req = urllib.request.Request(url, data=data, headers=all_headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback URL
            return (
                int(resp.status),
                {k.lower(): v for k, v in resp.headers.items()},
                resp.read().decode(),
            )
    except urllib.error.HTTPError as err:
        return int(err.code), {k.lower(): v for k, v in err.headers.items()}, err.read().decode()


def _served(mcp_url: str, token: str, probe_tool: str) -> dict[str, int]:
    """Statuses that show whether Authorino serves both AuthConfigs: ``tools/list`` without a
    token (broker route: 401), and a session's first ``tools/call`` with a real token (the
    router's hairpin initialize and the call itself pass the backend route's AuthConfig: 200).
    An AuthConfig Authorino has not indexed yet answers 404 "service not found"."""
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    anonymous, _, _ = _post(mcp_url, listing, {})
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "kmg-testbed", "version": "1"},
        },
    }
    auth = {"authorization": f"Bearer {token}"}
    initialized, headers, _ = _post(mcp_url, init, auth)
    sid = headers.get("mcp-session-id", "")
    if initialized != 200 or not sid:
        return {"tools/list (no token)": anonymous, "initialize": initialized}
    session = {**auth, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": probe_tool, "arguments": {}}}  # fmt: skip
    called, _, _ = _post(mcp_url, call, session)
    return {"tools/list (no token)": anonymous, "initialize": initialized, "tools/call": called}


def wait_served(
    mcp_url: str,
    authorino: Authorino,
    token: Callable[[], str],
    probe_tool: str,
    timeout: float = SERVED_TIMEOUT,
) -> None:
    """Wait until Authorino has indexed the AuthConfigs of both routes (see :func:`_served`).
    (Authorino's ``/readyz`` is already ready before its first reconciliation, and AuthConfig
    status survives a restart.)"""
    deadline = time.monotonic() + timeout
    statuses: dict[str, int] = {}
    user_token = token()
    while time.monotonic() < deadline:
        statuses = _served(mcp_url, user_token, probe_tool)
        if statuses == {"tools/list (no token)": 401, "initialize": 200, "tools/call": 200}:
            return
        time.sleep(0.3)
    raise process.ComponentError(
        f"Authorino does not serve the AuthConfigs within {timeout:.0f}s (statuses: "
        f"{statuses}).\nLog {authorino.log_path} ends with:\n{authorino.tail()}"
    )


def authorino_layer(grpc_port: int) -> Callable[[Mapping[str, int], str], AuthLayer]:
    """The gateway's auth layer: Authorino, the backend AuthConfig on the servers' routes and
    the broker AuthConfig on the gateway's ``/mcp``. Envoy calls no plugin check here: Authorino
    presents the caller secret itself (the overlay's ``sharedSecretRef``)."""

    def layer(_ports: Mapping[str, int], _caller_secret: str) -> AuthLayer:
        return authorino_auth(
            grpc_port,
            server_authconfig=AUTHCONFIG_HOSTS[BACKEND_POLICY],
            broker_authconfig=AUTHCONFIG_HOSTS[BROKER_POLICY],
        )

    return layer


def shared_secret_refs(spec: Any) -> Iterator[tuple[str, str]]:
    """Every ``sharedSecretRef`` (name, key) in an AuthConfig spec."""
    if isinstance(spec, dict):
        ref = spec.get("sharedSecretRef")
        if isinstance(ref, dict):
            yield (str(ref["name"]), str(ref["key"]))
        for value in spec.values():
            yield from shared_secret_refs(value)
    elif isinstance(spec, list):
        for item in spec:
            yield from shared_secret_refs(item)


def facade_secret_object() -> dict[str, Any]:
    """The Secret the overlay's ``exchange`` call reads: HTTP Basic of the facade client."""
    basic = base64.b64encode(f"{FACADE_CLIENT_ID}:{FACADE_CLIENT_SECRET}".encode()).decode()
    name, key = SHARED_SECRET
    return authorino_mod.opaque_secret(name, NAMESPACE, {key: basic})


def caller_secret_object(gateway: LocalGateway) -> dict[str, Any]:
    """The Secret the overlay's ``policy`` calls read: the stack's caller secret."""
    name, key = CALLER_SECRET_REF
    return authorino_mod.opaque_secret(name, NAMESPACE, {key: gateway.caller_secret})


def environment(gateway: LocalGateway, keycloak: kc.Keycloak) -> Environment:
    """The testbed's addresses for the overlay's environment-specific strings."""
    issuer = keycloak.issuer(REALM_MCP)
    return Environment(
        token_exchange_url=gateway.services["token-exchange"].url,
        policy_url=gateway.services["policy"].url,
        keycloak_realms_url=issuer[: -len(REALM_MCP)],
        gateway_url=gateway.envoy.url,
    )


def _configure(gateway: LocalGateway, keycloak: kc.Keycloak) -> dict[str, dict[str, Any]]:
    authconfigs = overlay_authconfigs(environment(gateway, keycloak), NAMESPACE, AUTHCONFIG_HOSTS)
    refs = {ref for config in authconfigs.values() for ref in shared_secret_refs(config["spec"])}
    if refs != {SHARED_SECRET, CALLER_SECRET_REF}:
        raise OverlayMismatch(f"the overlay's sharedSecretRefs changed: {sorted(refs)}")
    return authconfigs


def start_authorino_gateway(
    run_dir: Path,
    *,
    keycloak: kc.Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
    ca_file: Path,
    progress: Progress = _quiet,
) -> AuthorinoGateway:
    """Authorino on cluster A, our services behind Envoy + Authorino, the overlay's AuthConfigs."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    progress("installing the AuthConfig CRD and starting Authorino (cluster A)")
    _run_async(authorino_mod.install(cluster_a, NAMESPACE))
    authorino = Authorino(cluster_a, NAMESPACE, run_dir / SUBDIR, ca_file).start()
    timings["authorino_start"] = authorino.start_seconds[-1]
    gateway: LocalGateway | None = None
    try:
        listen_port = free_port()
        gateway = start_gateway(
            run_dir,
            keycloak=keycloak,
            cluster_a=cluster_a,
            cluster_b=cluster_b,
            ca_file=ca_file,
            progress=progress,
            listen_port=listen_port,
            subdir=SUBDIR,
            auth=authorino_layer(authorino.grpc_port),
            extra_facade_clients={FACADE_CLIENT_ID: FACADE_CLIENT_SECRET},
            wristband_form="both",
        )
        progress("applying the Kuadrant overlay's AuthPolicies as AuthConfigs")
        applied = time.monotonic()
        authconfigs = _configure(gateway, keycloak)
        statuses = _run_async(
            authorino_mod.apply_authconfigs(
                cluster_a,
                list(authconfigs.values()),
                [facade_secret_object(), caller_secret_object(gateway)],
                authorino=authorino,
            )
        )
        wait_served(
            gateway.mcp_url,
            authorino,
            lambda: keycloak.user_token("mcp", "mcp"),
            gateway.tool(PROBE_TOOL),
        )
        timings["authconfigs_ready"] = time.monotonic() - applied
    except BaseException:
        if gateway is not None:
            gateway.stop()
        authorino.stop()
        raise
    timings["total"] = time.monotonic() - started
    return AuthorinoGateway(gateway, authorino, authconfigs, statuses, timings)
