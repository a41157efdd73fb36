"""A running Keycloak: HTTPS, the realms imported, the admin API; its token grants for the tests
come from :class:`~.grants.TokenGrants`."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.testbed import process, versions
from tests.testbed.identity_plan import REALM_MCP, IdentityPlan
from tests.testbed.keycloak.distribution import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    BASE_DB_URL,
    MARKER,
    base_db_dir,
    base_db_usable,
    ensure_server,
    kc_env,
    make_home,
    realm_names,
    serves,
)
from tests.testbed.keycloak.grants import (
    GATEWAY_CLIENT_ID,
    GATEWAY_CLIENT_SECRET,
    TEST_CLIENT_ID,
    TokenGrants,
)
from tests.testbed.keycloak.java import ensure_java, log
from tests.testbed.keycloak.realms import REALM_TEMPLATES, render_realms
from tests.testbed.pki import CertPair
from tests.testbed.ports import free_port

CLUSTER_B_IDP_ALIAS = "mcp"


@dataclass
class StartStats:
    seconds: float
    rss_mib: float | None


@dataclass
class Keycloak(process.Supervised, TokenGrants):
    """One Keycloak server of a run. ``start()`` / ``stop()`` may be called again (fault tests):
    the port, hostname, data directory and realm signing keys stay the same."""

    stop_timeout = 20.0  # a class attribute, not a field: the JVM takes its time

    run_dir: Path
    plan: IdentityPlan
    tls: CertPair
    ca_file: Path
    version: str = versions.KEYCLOAK
    management_port: int = field(default_factory=free_port)
    templates: Path = REALM_TEMPLATES
    use_base_db: bool = True  # start from the cached base database when provisioning made one
    fast_start: bool = True  # C1-only JIT (see kc_env); False for benchmarks that time Keycloak
    starts: list[StartStats] = field(default_factory=list)
    _proc: process.ManagedProcess | None = None
    _ssl: Any = None
    _launched_at: float = 0.0
    _ready: bool = False
    _urls_to_fix: bool = False

    # -- addresses ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.plan.keycloak_url

    def issuer(self, realm: str = REALM_MCP) -> str:
        return self.plan.issuer(realm)

    def token_url(self, realm: str = REALM_MCP) -> str:
        return self.plan.token_url(realm)

    def jwks_url(self, realm: str = REALM_MCP) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/certs"

    @property
    def management_url(self) -> str:
        return f"https://{self.plan.host}:{self.management_port}"

    @property
    def home(self) -> Path:
        return self.run_dir / "keycloak" / "home"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "keycloak.log"

    gateway_client_id = GATEWAY_CLIENT_ID
    gateway_client_secret = GATEWAY_CLIENT_SECRET
    test_client_id = TEST_CLIENT_ID

    # -- lifecycle ------------------------------------------------------------------------------
    def _prepare_home(self, server: Path) -> None:
        home = self.home
        if (home / "bin" / "kc.sh").exists():
            return  # restart: keep data/ (H2 database, realm keys)
        make_home(home, server)
        base = base_db_dir(self.version, self.templates)
        if self.use_base_db and (base / MARKER).exists() and base_db_usable(self.templates):
            shutil.copytree(base / "h2", home / "data" / "h2")
            self._urls_to_fix = True
        else:
            self._urls_to_fix = False
            if self.use_base_db:
                log(
                    "keycloak: no base database for these realm files: importing them "
                    "(slower first start; `make testbed` creates it)"
                )
        # Rendered for the record and for --import-realm, which skips realms that exist.
        render_realms(home / "data" / "import", self.url, self.templates)

    def command(self) -> list[str]:
        return [
            str(self.home / "bin" / "kc.sh"),
            "start",
            "--optimized",
            f"--hostname={self.url}",  # pins iss: the API servers trust exactly this URL
            "--hostname-strict=true",
            "--cache=local",  # runtime option in 26.7: no JGroups cluster on *:7800 (as start-dev)
            f"--http-host={self.plan.host}",
            "--http-enabled=false",
            f"--https-port={self.plan.keycloak_port}",
            f"--https-certificate-file={self.tls.cert}",
            f"--https-certificate-key-file={self.tls.key}",
            f"--http-management-port={self.management_port}",
            f"--truststore-paths={self.ca_file}",  # realm cluster-b fetches realm mcp's JWKS
            "--import-realm",
        ]

    def launch(self) -> Self:
        """Start the process without waiting (Keycloak's start overlaps the API servers')."""
        if self._proc is not None and self._proc.running:
            return self
        java = ensure_java()
        server = ensure_server(self.version, java=java)
        self._prepare_home(server)
        env = kc_env(java, self.version, fast_start=self.fast_start, KEYCLOAK_URL=self.url)
        self._launched_at = time.monotonic()
        self._ready = False
        self._proc = process.ManagedProcess("keycloak", self.command(), self.log_path, env=env)
        self._proc.start()
        return self

    def wait_ready(self, timeout: float = 240.0) -> Self:
        """Wait for /health/ready and for every imported realm's discovery document."""
        if self._proc is None:
            raise process.ComponentError("keycloak: wait_ready() before launch()")
        if self._ready and self._proc.running:
            return self
        self._proc.wait_until(
            lambda: process.http_ok(f"{self.management_url}/health/ready", ca_file=self.ca_file),
            timeout=timeout,
            what="ready (management /health/ready)",
        )
        # Realm import runs before readiness; check the realms answer on the public port.
        for realm in realm_names(self.home / "data" / "import"):
            self._proc.wait_until(
                self._realm_served(realm),
                timeout=30,
                what=f"serving realm {realm}",
            )
        if self._urls_to_fix:
            self._fix_urls()
            self._urls_to_fix = False
        self._ready = True
        self.starts.append(StartStats(time.monotonic() - self._launched_at, self.rss_mib()))
        return self

    def _realm_served(self, realm: str) -> Callable[[], bool]:
        return serves(f"{self.issuer(realm)}/.well-known/openid-configuration", self.ca_file)

    def start(self, timeout: float = 240.0) -> Self:
        """Launch (if not running) and wait until ready; again after ``stop()``: same port/data."""
        return self.launch().wait_ready(timeout)

    def rss_mib(self) -> float | None:
        """Resident memory of the Keycloak JVM (child of kc.sh), MiB."""
        if self._proc is None or self._proc.proc is None:
            return None
        total = 0
        for pid in _process_tree(self._proc.proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024 if total else None

    # -- HTTP helpers ---------------------------------------------------------------------------
    def ssl_context(self) -> Any:
        import ssl

        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def admin_token(self) -> str:
        body = self.post_form(
            self.token_url("master"),
            {
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": ADMIN_USERNAME,
                "password": ADMIN_PASSWORD,
            },
            what="admin token",
        )
        return str(body["access_token"])

    def admin_request(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> Any:
        """``method /admin/<path>`` (e.g. ``realms/mcp/clients``) as the bootstrap admin; the JSON
        answer or None. Errors name the call and Keycloak's answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - testbed URL
            f"{self.url}/admin/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token or self.admin_token()}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context()) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise process.ComponentError(
                f"keycloak admin API {method} {path}: HTTP {err.code} {err.read()[:300]!r}"
            ) from None
        return json.loads(raw) if raw else None

    def admin_get(self, path: str) -> Any:
        return self.admin_request("GET", path)

    def _fix_urls(self) -> None:
        """Replace the base database's stand-in URL by this server's URL in every client and
        identity provider of the imported realms, then check that none is left."""
        token = self.admin_token()
        for realm in realm_names(self.home / "data" / "import"):
            clients = self.admin_request("GET", f"realms/{realm}/clients?max=1000", token=token)
            for client in clients:
                text = json.dumps(client)
                if BASE_DB_URL in text:
                    fixed = json.loads(text.replace(BASE_DB_URL, self.url))
                    path = f"realms/{realm}/clients/{client['id']}"
                    self.admin_request("PUT", path, fixed, token=token)
            providers_path = f"realms/{realm}/identity-provider/instances"
            for idp in self.admin_request("GET", providers_path, token=token):
                text = json.dumps(idp)
                if BASE_DB_URL in text:
                    fixed = json.loads(text.replace(BASE_DB_URL, self.url))
                    path = f"{providers_path}/{urllib.parse.quote(idp['alias'], safe='')}"
                    self.admin_request("PUT", path, fixed, token=token)
            left = json.dumps(
                [
                    self.admin_request("GET", f"realms/{realm}", token=token),
                    self.admin_request("GET", f"realms/{realm}/clients?max=1000", token=token),
                    self.admin_request("GET", providers_path, token=token),
                ]
            )
            if BASE_DB_URL in left:
                raise process.ComponentError(
                    f"keycloak: realm {realm} still refers to {BASE_DB_URL} after the fix-up; "
                    "start with use_base_db=False and report the realm file change"
                )


def _process_tree(root: int) -> list[int]:
    pids, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.append(int(child))
            frontier.append(int(child))
    return pids
