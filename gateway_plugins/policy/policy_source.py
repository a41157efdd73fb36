"""The policy the engines evaluate: Rego modules, ``data.mcp.config`` and the catalogue.

Loaded from a policy folder (a mounted ConfigMap is read at one version), checked for strings the
engines would not quote, and written as an OPA bundle for OPA servers that load it themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_plugins.policy.input import Catalogue


class PolicySourceError(Exception):
    """The policy files or data files cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class PolicySource:
    """Rego modules (name → text), ``data.mcp.config`` and the optional ``data.mcp.catalogue``."""

    modules: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)
    catalogue: Catalogue | None = None

    def data(self) -> dict[str, Any]:
        mcp: dict[str, Any] = {"config": self.config}
        if self.catalogue is not None:
            mcp["catalogue"] = self.catalogue
        return {"mcp": mcp}

    def with_catalogue(self, catalogue: Catalogue | None) -> PolicySource:
        return PolicySource(dict(self.modules), dict(self.config), catalogue)


def load_policy_source(
    policies_dir: Path, data_dirs: list[Path] | None = None, catalogue: Catalogue | None = None
) -> PolicySource:
    """Every ``*.rego`` under ``policies_dir`` except tests and every data file's settings.

    Data files (``*.json`` directly in each data dir, default ``<policies_dir>/data``) are JSON
    objects whose keys are settings of ``data.mcp.config``; a key set by two files is an error.
    """
    if not policies_dir.is_dir():
        raise PolicySourceError(f"policy directory {policies_dir} does not exist")
    modules: dict[str, str] = {}
    for path in sorted(policies_dir.rglob("*.rego")):
        if path.name.endswith("_test.rego") or _in_volume_internals(path, policies_dir):
            continue
        try:
            modules[path.relative_to(policies_dir).as_posix()] = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicySourceError(f"cannot read policy {path}: {exc.strerror or exc}") from None
    if not modules:
        raise PolicySourceError(f"no Rego modules (*.rego) in {policies_dir}")
    config: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for data_dir in data_dirs if data_dirs is not None else [policies_dir / "data"]:
        if not data_dir.is_dir():
            raise PolicySourceError(f"data directory {data_dir} does not exist")
        for path in sorted(data_dir.glob("*.json")):
            for key, value in _read_json_object(path).items():
                if key in config:
                    raise PolicySourceError(
                        f"setting {key!r} is set by both {origin[key]} and {path}; keep one"
                    )
                config[key] = value
                origin[key] = path
    check_strings(config, "data.mcp.config")
    return PolicySource(modules, config, catalogue)


CONFIGMAP_DATA = "..data"  # a mounted ConfigMap's link to its current version


def snapshot_dir(path: Path) -> Path:
    """The folder to read: a mounted ConfigMap's current version (``..data`` resolved, a folder
    kubelet never changes, only replaces) or the folder itself."""
    data = path / CONFIGMAP_DATA
    return data.resolve() if data.is_dir() else path


def _in_volume_internals(path: Path, root: Path) -> bool:
    """A file under a mounted ConfigMap's ``..data`` / ``..<timestamp>`` folders: the same files
    again (the visible names are links into them), not extra modules."""
    return any(part.startswith("..") for part in path.relative_to(root).parts[:-1])


_UNSAFE = re.compile(r'[\x00-\x1f"\\]')


def check_strings(value: Any, where: str) -> None:
    """Quotes, backslashes and control characters are refused in settings: reasons quote them,
    and the embedded engine does not escape them in its output."""
    if isinstance(value, str):
        if _UNSAFE.search(value):
            raise PolicySourceError(
                f"{where}: {value[:40]!r} contains a quote, backslash or control character; "
                "remove it"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key, where)
            check_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_strings(item, f"{where}[{index}]")


def write_opa_bundle(source: PolicySource, out: Path, *, revision: str = "") -> Path:
    """An OPA bundle (tar.gz) holding the modules and ``data.mcp.config`` (and catalogue).

    For OPA servers that load the policy themselves (``opa run --server --bundle FILE`` or a
    bundle service) with the policy service's ``opa.load_policies: false``.
    """
    import io
    import tarfile

    files: dict[str, bytes] = {
        ".manifest": json.dumps({"revision": revision, "roots": ["mcp"]}).encode(),
        "mcp/config/data.json": json.dumps(source.config, indent=1).encode(),
    }
    for name, text in source.modules.items():
        files[f"policies/{name}"] = text.encode()
    if source.catalogue is not None:
        files["mcp/catalogue/data.json"] = json.dumps(source.catalogue).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for name, payload in sorted(files.items()):
            info = tarfile.TarInfo(f"/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return out


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicySourceError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PolicySourceError(f"data file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicySourceError(f"data file {path} must hold a JSON object of settings")
    return doc
