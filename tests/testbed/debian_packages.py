"""Programs from Debian packages, unpacked into the component cache (no system install).

Some testbed components are ordinary distribution programs (Redis, nginx). When the machine has
them on ``PATH`` they are used as they are; otherwise the Debian packages are fetched with
``apt-get download`` (the machine's own apt sources, e.g. Debian bookworm), unpacked with
``dpkg-deb -x`` into ``<cache>/debian/<name>-<version>-<hash>/`` and run from there with
``LD_LIBRARY_PATH`` pointing at the unpacked libraries. Nothing is installed into the system and
no maintainer script runs.

The folder is named by the exact package versions apt offered when it was fetched; a warm run
uses it without asking apt (``python -m tests.testbed.build --only redis --force`` fetches the
versions apt offers now, e.g. after a Debian security update). Libraries the program needs that
the machine does not have (``dpkg-query`` says not installed) are unpacked too; those it has are
taken from the system.
On a machine whose apt lists are missing (fresh container), ``apt-get update`` runs first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import paths, process

_MARKER = ".complete"
LIB_DIR = "usr/lib/x86_64-linux-gnu"


def _log(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


@dataclass(frozen=True)
class DebianProgram:
    """A program taken from PATH or unpacked from Debian packages."""

    name: str  # cache folder name, e.g. "redis"
    path_names: tuple[str, ...]  # programs on PATH that serve, in order of preference
    binary: str  # the program inside the unpacked tree, e.g. "usr/bin/redis-server"
    packages: tuple[str, ...]  # always unpacked
    libraries: tuple[str, ...] = ()  # unpacked only when not installed on the machine
    version_args: tuple[str, ...] = ("--version",)

    def on_path(self) -> Path | None:
        for name in self.path_names:
            found = shutil.which(name)
            if found:
                return Path(found)
        return None


@dataclass(frozen=True)
class Located:
    """Where a program is and the environment it needs to run."""

    binary: Path
    env: dict[str, str]
    source: str  # "PATH" or "debian <package>=<version> ..."


def _apt_available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None


def _installed(packages: Sequence[str]) -> set[str]:
    """The packages among ``packages`` that dpkg says are installed."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        line.split(" ", 1)[0].split(":", 1)[0]
        for line in proc.stdout.splitlines()
        if line.endswith("install ok installed")
    }


def _policy(packages: Sequence[str]) -> dict[str, str | None]:
    """Candidate version of each package (one ``apt-cache policy`` call)."""
    proc = subprocess.run(
        ["apt-cache", "policy", *packages], capture_output=True, text=True, check=False
    )
    found: dict[str, str | None] = dict.fromkeys(packages)
    current: str | None = None
    for line in proc.stdout.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":", 1)[0]
        elif current in found and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            found[current] = None if value in ("", "(none)") else value
    return found


def _candidates(packages: Sequence[str]) -> dict[str, str]:
    found = _policy(packages)
    missing = [p for p, v in found.items() if v is None]
    if missing and os.geteuid() == 0:
        _log(f"apt knows no candidate for {missing}: running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600)
        found = _policy(packages)
        missing = [p for p, v in found.items() if v is None]
    if missing:
        raise process.ComponentError(
            f"apt offers no version of {missing}: run `apt-get update` (as root) or install "
            "the program so that it is on PATH"
        )
    return {p: v for p, v in found.items() if v is not None}


def _key(versions: dict[str, str]) -> str:
    text = "\n".join(f"{p}={v}" for p, v in sorted(versions.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _short_version(version: str) -> str:
    """``5:7.0.15-1~deb12u10`` -> ``7.0.15``."""
    return version.split(":", 1)[-1].split("-", 1)[0]


def _runtime_env(root: Path) -> dict[str, str]:
    lib = root / LIB_DIR
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": f"{lib}:{current}" if current else str(lib)}


def _cached(program: DebianProgram) -> Path | None:
    base = paths.cache_dir() / "debian"
    if not base.is_dir():
        return None
    ready = sorted(
        (d for d in base.glob(f"{program.name}-*") if (d / _MARKER).exists()),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    return ready[0] if ready else None


def provision(program: DebianProgram, *, force: bool = False) -> Located:
    """The program from PATH, or from its unpacked Debian packages (fetched once)."""
    found = program.on_path()
    if found is not None and not force:
        _log(f"{program.name}: using {found} from PATH")
        return Located(found, {}, "PATH")
    cached = _cached(program)
    if cached is not None and not force:
        _log(f"{program.name}: cached ({cached}; --force fetches the current packages)")
        return _located(program, cached)
    if not _apt_available():
        raise process.ComponentError(
            f"{program.name}: none of {list(program.path_names)} is on PATH and this machine "
            "has no apt-get/dpkg-deb to fetch the Debian packages; install it"
        )
    present = _installed(program.libraries) if program.libraries else set()
    wanted = list(program.packages) + [p for p in program.libraries if p not in present]
    versions = _candidates(wanted)
    main_version = _short_version(versions[program.packages[0]])
    root = paths.cache_dir() / "debian" / f"{program.name}-{main_version}-{_key(versions)}"
    _log(f"{program.name} {main_version}: fetching {', '.join(sorted(versions))} with apt-get")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=f"kmg-{program.name}-debs-") as scratch:
        os.chmod(scratch, 0o755)  # noqa: S103 - apt's _apt user downloads into it (no secrets)
        specs = [f"{p}={v}" for p, v in sorted(versions.items())]
        proc = subprocess.run(
            ["apt-get", "download", "-qq", *specs],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        debs = sorted(Path(scratch).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(specs):
            raise process.ComponentError(
                f"{program.name}: `apt-get download {' '.join(specs)}` failed "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, timeout=120)
    located = _located(program, tmp)
    _check_runs(program, located)
    (tmp / _MARKER).write_text(json.dumps({"packages": versions}, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    _log(f"{program.name} {main_version}: unpacked into {root}")
    return _located(program, root)


def _located(program: DebianProgram, root: Path) -> Located:
    binary = root / program.binary
    marker = root / _MARKER
    source = "debian"
    if marker.exists():
        packages = json.loads(marker.read_text()).get("packages", {})
        source = "debian " + " ".join(f"{p}={v}" for p, v in sorted(packages.items()))
    return Located(binary, _runtime_env(root), source)


def _check_runs(program: DebianProgram, located: Located) -> None:
    proc = subprocess.run(
        [str(located.binary), *program.version_args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **located.env),
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise process.ComponentError(
            f"{program.name}: the unpacked {located.binary} does not run "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}"
        )


def locate(program: DebianProgram) -> Located:
    """The program for a test run: PATH, else the cache; fails clearly when neither has it."""
    found = program.on_path()
    if found is not None:
        return Located(found, {}, "PATH")
    cached = _cached(program)
    if cached is None:
        raise process.ComponentError(
            f"{program.name} is not on PATH and not in the component cache: run `make testbed`"
        )
    return _located(program, cached)
