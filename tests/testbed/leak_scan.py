"""Scan a run's log files and recorded tool outputs for credentials: zero hits expected.

What counts as a leak:

* a complete JWT (``header.payload.signature``, header and payload base64url JSON objects, a
  non-empty signature): every Keycloak access token, service-account token, exchanged token or
  forged token of the suite looks like this, and no log line or tool output may carry one;
* any value registered with :func:`register_secret` (Secret data the tests create, client
  secrets, opaque tokens), found verbatim.

A hit is reported as ``file:line: what`` where ``what`` names the token by its non-secret claims
(``iss``, ``sub``/``preferred_username``, ``kid``) or the secret by its label: the report never
contains the value itself.

Only text logs are scanned (``*.log``, ``*.jsonl``, recorded outputs under ``tool-outputs/``):
secret files, certificates and Keycloak's database legitimately hold credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}")
LOG_SUFFIXES = (".log", ".jsonl")
OUTPUTS_DIR = "tool-outputs"
MIN_SECRET_LEN = 8  # shorter values ("mcp") would match ordinary words

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> label
_outputs: list[tuple[str, str]] = []  # (label, text) recorded in memory until flushed


@dataclass(frozen=True)
class Hit:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def register_secret(value: str, label: str) -> None:
    """Remember a credential the suite uses; the end-of-session scan looks for it verbatim."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _secrets.setdefault(value, label)


def registered_secrets() -> dict[str, str]:
    with _lock:
        return dict(_secrets)


def record_output(label: str, text: str) -> None:
    """Keep a tool output (or any text a client received) for the end-of-session scan."""
    with _lock:
        _outputs.append((label, text))


def pending_outputs() -> list[tuple[str, str]]:
    """Outputs recorded and not yet written (``(label, text)``)."""
    with _lock:
        return list(_outputs)


def write_outputs(path: Path, outputs: Iterable[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for label, text in outputs:
            out.write(f"--- {label}\n{text}\n")
    return path


def flush_outputs(run_dir: Path) -> Path:
    """Move the recorded outputs to ``<run_dir>/tool-outputs/outputs.log`` (appended)."""
    with _lock:
        recorded, _outputs[:] = list(_outputs), []
    return write_outputs(run_dir / OUTPUTS_DIR / "outputs.log", recorded)


def _b64json(segment: str) -> dict[str, object] | None:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def describe_jwt(token: str) -> str | None:
    """A value-free description of a JWT-shaped string, or None when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, claims = _b64json(parts[0]), _b64json(parts[1])
    if header is None or claims is None or "alg" not in header:
        return None
    who = claims.get("preferred_username") or claims.get("sub") or "?"
    return (
        f"JWT (alg={header.get('alg')}, kid={header.get('kid')}, "
        f"iss={claims.get('iss')}, subject={who})"
    )


def scan_text(text: str, secrets: dict[str, str]) -> Iterator[tuple[int, str]]:
    """``(line number, description)`` of every credential in ``text``."""
    for number, line in enumerate(text.splitlines(), 1):
        for match in JWT_PATTERN.finditer(line):
            what = describe_jwt(match.group(0))
            if what is not None:
                yield number, what
        for value, label in secrets.items():
            if value in line:
                yield number, f"secret value ({label})"


def files_to_scan(run_dir: Path) -> Iterator[Path]:
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or "secrets" in path.parts:
            continue
        if path.suffix in LOG_SUFFIXES or OUTPUTS_DIR in path.relative_to(run_dir).parts:
            yield path


def scan_files(paths: Iterable[Path], secrets: dict[str, str] | None = None) -> list[Hit]:
    secrets = registered_secrets() if secrets is None else secrets
    hits: list[Hit] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        hits += [Hit(path, n, what) for n, what in scan_text(text, secrets)]
    return hits


def scan_run_dir(run_dir: Path, secrets: dict[str, str] | None = None) -> list[Hit]:
    """Every hit in the run folder's logs and recorded outputs."""
    return scan_files(files_to_scan(run_dir), secrets)


def report(hits: list[Hit], limit: int = 50) -> str:
    lines = [f"credential leak scan: {len(hits)} hit(s) (values never shown)"]
    lines += [f"  {hit}" for hit in hits[:limit]]
    if len(hits) > limit:
        lines.append(f"  ... and {len(hits) - limit} more")
    return "\n".join(lines)
