"""The Keycloak distribution (Maven Central, sha1-checked), the optimized server built once into the
cache, each run's home, and the base database with the realms imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.testbed import paths, process, versions
from tests.testbed.keycloak.java import ensure_java, java_major, log
from tests.testbed.keycloak.realms import REALM_TEMPLATES, URL_PLACEHOLDER, render_realms
from tests.testbed.ports import free_port

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
# Demo-only admin credentials (see manifests/keycloak/README.md). Never use them outside the
# testbed.
ADMIN_USERNAME = "kmg-admin"
ADMIN_PASSWORD = "kmg-admin-demo-only"

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


MARKER = ".complete"


def version_dir(version: str) -> Path:
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
                    log(f"keycloak: downloaded {done >> 20} MiB{pct}")
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
    vdir = version_dir(version)
    vdir.mkdir(parents=True, exist_ok=True)
    archive = vdir / f"keycloak-quarkus-dist-{version}.tar.gz"
    verified = archive.with_name(archive.name + ".verified")
    if archive.exists() and verified.exists() and not force:
        return archive
    url = _dist_url(version)
    with urllib.request.urlopen(url + ".sha1", timeout=30) as resp:  # noqa: S310
        expected = resp.read().decode().split()[0].strip().lower()
    if force or not archive.exists():
        log(f"keycloak {version}: downloading {url}")
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
    return version_dir(version) / f"server-{server_key(options)}" / f"keycloak-{version}"


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
    if (top / MARKER).exists() and not force:
        return home
    archive = ensure_distribution(version, force=force)
    java = java or ensure_java()
    tmp = top.with_name(top.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"keycloak {version}: extracting into {top}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="tar")
    log(f"keycloak {version}: kc.sh build {' '.join(options)} (about a minute)")
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
    (tmp / MARKER).write_text(
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
    log(f"keycloak {version}: optimized server built in {time.monotonic() - started:.0f}s")
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
    append = os.environ.get("KMG_KEYCLOAK_JAVA_OPTS", f"{jit} {cds_opts(java, version)}".strip())
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
    if (base / MARKER).exists() and not force:
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
    log(f"keycloak {version}: one start to create the base database with the realms (~1 min)")
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
        for realm in realm_names(work / "home" / "data" / "import"):
            url = f"http://127.0.0.1:{port}/realms/{realm}/.well-known/openid-configuration"
            proc.wait_until(serves(url), timeout=300, what=f"serving {realm}")
    finally:
        proc.stop(timeout=60)
    shutil.copytree(work / "home" / "data" / "h2", work / "h2")
    shutil.rmtree(work / "home")
    (work / MARKER).write_text(
        json.dumps({"seconds": round(time.monotonic() - started, 1), "url": BASE_DB_URL})
    )
    shutil.rmtree(base, ignore_errors=True)
    try:
        work.rename(base)
    except OSError:  # another session finished the same database first
        shutil.rmtree(work, ignore_errors=True)
    log(f"keycloak {version}: base database ready in {time.monotonic() - started:.0f}s")
    return base


def provision(force: bool = False) -> None:
    """Provisioner for ``python -m tests.testbed.build``: distribution, Java, optimized server,
    base database."""
    java = ensure_java()
    log(f"keycloak: Java {java_major(java)} at {java}")
    home = ensure_server(force=force, java=java)
    ensure_base_db(java=java, force=force)
    log(f"keycloak {versions.KEYCLOAK}: ready ({home})")


def serves(url: str, ca_file: Path | None = None) -> Callable[[], bool]:
    return lambda: process.http_ok(url, ca_file=ca_file)


def realm_names(import_dir: Path) -> list[str]:
    return [json.loads(f.read_text())["realm"] for f in sorted(import_dir.glob("*.json"))]


def cds_opts(java: Path, version: str) -> str:
    """Class-data sharing archive in the cache, created by the first start, reused afterwards
    (measured: without it a start takes ~1.5x as long).

    ``-Xlog:cds=off``: Java 22+ logs at *error* level that the JDK's own base archive was dumped
    without kc.sh's ``--add-opens``/``--add-modules`` and disables its optimized module handling;
    that is expected and harmless (our dynamic archive on top still maps), so it is silenced.
    """
    java_id = hashlib.sha256(str(java).encode()).hexdigest()[:8]
    archive = version_dir(version) / f"appcds-{server_key()}-{java_major(java)}-{java_id}.jsa"
    return f"-XX:+AutoCreateSharedArchive -XX:SharedArchiveFile={archive} -Xlog:cds=off"
