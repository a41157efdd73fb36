"""Real CRDs for validating the manifests, fetched from Go modules through the module proxy.

``python -m tests.manifests.crds`` fetches them into the component cache
(``<cache>/crds/<source>-<version>/``); :func:`ensure_crds` does the same from the tests and is a
no-op when cached. The API server the tests apply to then validates our objects against the same
OpenAPI schemas and CEL rules as a real cluster with these components installed.

Sources (module proxy, ``go mod download -json MODULE@VERSION``):

* Gateway API (``sigs.k8s.io/gateway-api``, standard channel): HTTPRoute, Gateway, ReferenceGrant.
* Istio (``istio.io/api``, ``kubernetes/customresourcedefinitions.gen.yaml``): AuthorizationPolicy
  and the other Istio CRDs.
* Kuadrant AuthPolicy (``github.com/kuadrant/kuadrant-operator``) and Authorino AuthConfig
  (``github.com/kuadrant/authorino``). The proxy serves these versions, but the checksum database
  does not answer for them, so the module hash is pinned here (``pinned_sum``) and checked after
  the download instead: a different archive is refused.

* The MCP Gateway (``github.com/Kuadrant/mcp-gateway``, :data:`versions.MCP_GATEWAY`):
  MCPServerRegistration, MCPGatewayExtension, MCPVirtualServer. The module proxy refuses that
  module here, so the testbed's build (``tests/testbed/build.py``) takes it from a sha256-checked
  source archive when needed and keeps its ``config/`` folder: the CRDs are read from
  ``build.share_dir("mcp-gateway") / "config" / "crd"`` (``make testbed`` must have run).

:data:`KIND_SOURCES` are the CRDs the Kind flow installs where they differ from the testbed's:
the Gateway API standard channel of the version the MCP Gateway's own local environment installs
beside Istio (:data:`versions.KIND_GATEWAY_API`; Istio 1.26 does not run with the newer bundle).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, paths, versions

KUADRANT_OPERATOR = "v1.2.0"

_MARKER = ".complete"


@dataclass(frozen=True)
class CRDSource:
    """CRD files inside one Go module version."""

    name: str
    module: str
    version: str
    files: tuple[str, ...]
    pinned_sum: str | None = None  # h1: hash, for modules the checksum database does not serve

    def cache_dir(self) -> Path:
        return paths.cache_dir() / "crds" / f"{self.name}-{self.version}"


_GATEWAY_API_STANDARD = "config/crd/standard/gateway.networking.k8s.io_"

SOURCES: tuple[CRDSource, ...] = (
    CRDSource(
        "gateway-api",
        "sigs.k8s.io/gateway-api",
        versions.GATEWAY_API,
        tuple(
            f"{_GATEWAY_API_STANDARD}{kind}.yaml"
            for kind in ("gatewayclasses", "gateways", "httproutes", "referencegrants")
        ),
    ),
    CRDSource(
        "istio",
        "istio.io/api",
        versions.ISTIO_API,
        ("kubernetes/customresourcedefinitions.gen.yaml",),
    ),
    CRDSource(
        "kuadrant",
        "github.com/kuadrant/kuadrant-operator",
        KUADRANT_OPERATOR,
        ("config/crd/bases/kuadrant.io_authpolicies.yaml",),
        pinned_sum="h1:Z4BLun9ZNDYztL4D7bpAqzsSpfFPiH42I+Avu4jSV5U=",
    ),
    CRDSource(
        "authorino",
        "github.com/kuadrant/authorino",
        versions.AUTHORINO,
        ("install/crd/authorino.kuadrant.io_authconfigs.yaml",),
        pinned_sum="h1:fDq8b5valsBjhW9vMySx/+y/zKphMrVsWEMR8JGR43k=",
    ),
)

# The Gateway API standard channel the Kind flow installs (all of its CRDs, as the release's
# standard-install.yaml has them).
KIND_SOURCES: tuple[CRDSource, ...] = (
    CRDSource(
        "gateway-api",
        "sigs.k8s.io/gateway-api",
        versions.KIND_GATEWAY_API,
        tuple(
            f"{_GATEWAY_API_STANDARD}{kind}.yaml"
            for kind in (
                "backendtlspolicies",
                "gatewayclasses",
                "gateways",
                "grpcroutes",
                "httproutes",
                "referencegrants",
            )
        ),
    ),
)

MCP_GATEWAY_GROUP = "mcp.kuadrant.io"


def mcp_gateway_crd_dir() -> Path:
    """The MCP Gateway's ``config/crd`` of the built release (its three CRDs, top level)."""
    return build.share_dir("mcp-gateway") / "config" / "crd"


class CRDFetchError(RuntimeError):
    """A CRD source could not be fetched or verified; the message says which and why."""


def _log(msg: str) -> None:
    print(f"[crds] {msg}", file=sys.stderr, flush=True)


def _download(source: CRDSource) -> Path:
    """``go mod download -json`` the module; return its directory in the module cache."""
    if shutil.which("go") is None:
        raise CRDFetchError("the Go toolchain is needed to fetch CRDs (`go` not found on PATH)")
    env = dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    if source.pinned_sum is not None:
        # the checksum database has no entry: skip it for this module only, verify the pin below
        env["GONOSUMDB"] = source.module
    with tempfile.TemporaryDirectory(prefix="kmg-crds-") as scratch:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", f"{source.module}@{source.version}"],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    try:
        info: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        raise CRDFetchError(
            f"fetching {source.module}@{source.version} from the Go module proxy failed: {detail}"
        )
    if source.pinned_sum is not None and info.get("Sum") != source.pinned_sum:
        raise CRDFetchError(
            f"{source.module}@{source.version}: module hash {info.get('Sum')} differs from the "
            f"pinned {source.pinned_sum}; refusing it (update the pin only after checking why)"
        )
    return Path(info["Dir"])


def ensure_source(source: CRDSource, *, force: bool = False) -> Path:
    """Copy one source's CRD files into the cache (once); return the cache folder."""
    out = source.cache_dir()
    if (out / _MARKER).exists() and not force:
        return out
    _log(f"{source.name} {source.version}: fetching {source.module}")
    module_dir = _download(source)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in source.files:
        src = module_dir / rel
        if not src.is_file():
            raise CRDFetchError(f"{source.module}@{source.version} has no file {rel}")
        shutil.copyfile(src, tmp / src.name)
    (tmp / _MARKER).write_text(
        json.dumps({"module": source.module, "version": source.version, "files": source.files})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_crds(*, force: bool = False) -> list[Path]:
    """Every source fetched and cached; the folders, in :data:`SOURCES` order."""
    return [ensure_source(source, force=force) for source in SOURCES]


def _documents(folder: Path) -> Iterator[dict[str, Any]]:
    for file in sorted(folder.glob("*.yaml")):
        # the C loader when PyYAML has it: the Kuadrant and Istio CRDs are megabytes of YAML
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for doc in yaml.load_all(file.read_text(encoding="utf-8"), Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                yield doc


def load_crds(*, force: bool = False) -> list[dict[str, Any]]:
    """All CRD objects of every source (fetched first when needed) and the MCP Gateway's."""
    folders = [*ensure_crds(force=force), mcp_gateway_crd_dir()]
    return [doc for folder in folders for doc in _documents(folder)]


def load_kind_crds(*, force: bool = False) -> list[dict[str, Any]]:
    """The Gateway API CRDs the Kind flow installs (:data:`KIND_SOURCES`)."""
    folders = [ensure_source(source, force=force) for source in KIND_SOURCES]
    return [doc for folder in folders for doc in _documents(folder)]


def served_kinds(crds: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """``(apiVersion, kind)`` pairs the CRDs serve."""
    out: set[tuple[str, str]] = set()
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", False):
                out.add((f"{spec['group']}/{version['name']}", spec["names"]["kind"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the CRDs used to validate manifests/.")
    parser.add_argument("--force", action="store_true", help="fetch again even when cached")
    args = parser.parse_args(argv)
    try:
        crds = load_crds(force=args.force)
        load_kind_crds(force=args.force)
    except (CRDFetchError, FileNotFoundError) as exc:
        _log(str(exc))
        return 1
    for source in (*SOURCES, *KIND_SOURCES):
        _log(f"{source.name} {source.version}: {source.cache_dir()}")
    _log(f"{len(crds)} CRDs, serving {len(served_kinds(crds))} kinds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
