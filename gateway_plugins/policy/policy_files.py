"""The policy as its files are now: the Rego modules, data files and catalogue, each mounted
volume read at one version (a ConfigMap through its ``..data`` link, which kubelet swaps
atomically), and a cheap stamp of them that spots a file changed during a read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.input import Catalogue, InputError
from gateway_plugins.policy.policy_source import (
    PolicySource,
    PolicySourceError,
    load_policy_source,
    snapshot_dir,
)


def load_file_source(
    settings: PolicySettings, read_catalogue: Callable[[Path | None], Catalogue | None]
) -> PolicySource:
    """The policy as the files are now, each mounted volume read at one version."""
    seen: dict[Path, Path] = {}  # version folder read -> the path as configured

    def snap(path: Path) -> Path:
        resolved = snapshot_dir(path)
        if resolved != path:
            seen[resolved] = path
        return resolved

    policies = snap(settings.policies_dir)
    if settings.data_dirs is None:
        data_dirs = [policies / "data"]
    else:
        data_dirs = [snap(d) for d in settings.data_dirs]
    catalogue_file = settings.catalogue_file
    if catalogue_file is not None:
        catalogue_file = snap(catalogue_file.parent) / catalogue_file.name
    try:
        return load_policy_source(policies, data_dirs, read_catalogue(catalogue_file))
    except (PolicySourceError, InputError) as exc:
        message = str(exc)
        for resolved, configured in seen.items():  # name files as the operator knows them
            message = message.replace(str(resolved), str(configured))
        raise PolicySourceError(message) from None


def file_stamp(settings: PolicySettings) -> tuple[Any, ...]:
    """What changes when any watched file changes: the resolved folders and every file's size and
    modification time (cheap; the content comparison decides, this only spots torn reads)."""
    roots = [settings.policies_dir, *(settings.data_dirs or [])]
    if settings.catalogue_file is not None:
        roots.append(settings.catalogue_file.parent)
    out: list[Any] = []
    for root in roots:
        snap = snapshot_dir(root)
        out.append(str(snap))
        with contextlib.suppress(OSError):
            for path in sorted(snap.rglob("*")):
                if path.suffix in (".rego", ".json"):
                    stat = path.stat()
                    out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)
