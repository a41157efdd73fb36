"""Build or fetch every real testbed component into the cache: ``python -m tests.testbed.build``.

Go components are built from the Go module proxy through the wrapper modules in
``tests/testbed/go/<component>/`` (pinned ``go.mod`` + ``go.sum``). A component is rebuilt only
when its version or wrapper files change: the cache key is the version plus a hash of the wrapper.
A warm run only checks the markers and takes well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import paths, versions


@dataclass(frozen=True)
class SourceArchive:
    """Where a module comes from when the Go module proxy refuses it: a source archive (the tag's
    tarball) named by an environment variable and checked against a pinned sha256. Only the module
    itself comes from the archive; its dependencies still come from the proxy (the wrapper's
    ``go.sum`` pins them)."""

    module: str
    env_var: str
    sha256: str


@dataclass(frozen=True)
class GoComponent:
    """Binaries built from one wrapper module."""

    name: str
    version: str
    packages: dict[str, str]  # binary name -> Go package path
    # Extra ``-X`` settings for the linker (e.g. the version a binary reports); part of the cache
    # key only when given, so components without any keep their keys.
    x_ldflags: tuple[str, ...] = ()
    # Fallback for a module the proxy refuses (see SourceArchive).
    archive: SourceArchive | None = None
    # Folders of that module's source tree copied into ``<out>/share/`` (CRDs, sample configs).
    share: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.share and self.archive is None:
            raise ValueError(f"{self.name}: 'share' names folders of the archive's module")

    @property
    def wrapper(self) -> Path:
        return paths.GO_WRAPPERS / self.name

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        for file in sorted(self.wrapper.iterdir()):
            if file.is_file():
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
        for setting in self.x_ldflags:
            digest.update(b"-X\0" + setting.encode())
        return f"{self.version}-{digest.hexdigest()[:12]}"

    def out_dir(self) -> Path:
        return paths.bin_dir() / f"{self.name}-{self.cache_key()}"


GO_COMPONENTS: tuple[GoComponent, ...] = (
    GoComponent("etcd", versions.ETCD, {"etcd": "go.etcd.io/etcd/server/v3"}),
    GoComponent(
        "kubernetes",
        versions.KUBERNETES,
        {
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        },
    ),
    GoComponent("kwok", versions.KWOK, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}),
    GoComponent("opa", versions.OPA, {"opa": "github.com/open-policy-agent/opa"}),
    GoComponent("helm", versions.HELM, {"helm": "helm.sh/helm/v3/cmd/helm"}),
    # The checksum database has no entry for authorino; the wrapper's go.sum pins its hash, and Go
    # verifies a download against go.sum without asking the database, so no extra env is needed.
    GoComponent("authorino", versions.AUTHORINO, {"authorino": "github.com/kuadrant/authorino"}),
    GoComponent(
        "kustomize", versions.KUSTOMIZE, {"kustomize": "sigs.k8s.io/kustomize/kustomize/v5"}
    ),
    GoComponent(
        "metrics-server",
        versions.METRICS_SERVER,
        {"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
    ),
    # A real kubelet (one real node of cluster B, tests/testbed/kubelet.py): its own wrapper, so
    # the control plane's cache key does not change; same k8s.io/kubernetes version and pins.
    # It reports its version to the API server (node status): stamp it as k8s' own build does.
    GoComponent(
        "kubelet",
        versions.KUBERNETES,
        {"kubelet": "k8s.io/kubernetes/cmd/kubelet"},
        x_ldflags=(
            f"k8s.io/component-base/version.gitVersion={versions.KUBERNETES}",
            f"k8s.io/component-base/version.gitMajor={versions.KUBERNETES[1:].split('.')[0]}",
            f"k8s.io/component-base/version.gitMinor={versions.KUBERNETES.split('.')[1]}",
            "k8s.io/component-base/version.gitTreeState=clean",
        ),
    ),
    # Its CRI runtime (kubelet v1.36 needs containerd >= 2.0: the CRI RuntimeConfig call).
    GoComponent(
        "containerd",
        versions.CONTAINERD,
        {"containerd": "github.com/containerd/containerd/v2/cmd/containerd"},
    ),
    # The MCP Gateway (Kuadrant): the broker/router (Envoy ext_proc router + MCP broker in one
    # binary) and the controller that turns MCPServerRegistrations into the broker's config.
    GoComponent(
        "mcp-gateway",
        versions.MCP_GATEWAY,
        {
            "mcp-broker-router": "github.com/Kuadrant/mcp-gateway/cmd/mcp-broker-router",
            "mcp-gateway-controller": "github.com/Kuadrant/mcp-gateway/cmd",
        },
        x_ldflags=(f"main.version={versions.MCP_GATEWAY}",),
        archive=SourceArchive(
            "github.com/Kuadrant/mcp-gateway",
            "KMG_MCP_GATEWAY_SRC",
            versions.MCP_GATEWAY_ARCHIVE_SHA256,
        ),
        share=("config", "charts/mcp-gateway"),
    ),
    # Jaeger v2: the trace collector (OTLP receiver, in-memory storage, query API) the tracing
    # tests read one trace back from (tests/testbed/jaeger.py).
    GoComponent(
        "jaeger", versions.JAEGER, {"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"}
    ),
)

_MARKER = ".complete"


def binary(name: str) -> Path:
    """Path of a built binary (e.g. ``binary("kube-apiserver")``); fails clearly when not built."""
    for comp in GO_COMPONENTS:
        if name in comp.packages:
            path = comp.out_dir() / name
            if not (comp.out_dir() / _MARKER).exists() or not path.exists():
                raise FileNotFoundError(
                    f"{name} ({comp.name} {comp.version}) is not built: run `make testbed`"
                )
            return path
    raise KeyError(f"unknown testbed binary {name!r}")


def share_dir(component: str) -> Path:
    """``<out>/share/`` of a built component: the source folders it copies (``GoComponent.share``),
    e.g. ``share_dir("mcp-gateway") / "config" / "crd"``."""
    for comp in GO_COMPONENTS:
        if comp.name == component:
            out = comp.out_dir()
            if not (out / _MARKER).exists():
                raise FileNotFoundError(
                    f"{comp.name} {comp.version} is not built: run `make testbed`"
                )
            return out / "share"
    raise KeyError(f"unknown testbed component {component!r}")


def _log(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


def _module_from_proxy(comp: GoComponent, module: str, env: dict[str, str]) -> Path | None:
    """The module's folder in the Go module cache, or None when it cannot be downloaded."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{comp.version}"],
        cwd=comp.wrapper,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        _log(f"{comp.name}: the Go module proxy does not serve {module}@{comp.version}: {detail}")
        return None
    return Path(info["Dir"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _module_from_archive(comp: GoComponent, archive: SourceArchive) -> Path:
    """The archive named by ``archive.env_var``, checked and unpacked into the cache."""
    value = os.environ.get(archive.env_var)
    if not value:
        raise SystemExit(
            f"testbed: {archive.module}@{comp.version} cannot be fetched from the Go module proxy "
            f"and {archive.env_var} is not set: point it at that tag's source archive (.tar.gz, "
            f"sha256 {archive.sha256})"
        )
    src = Path(value).expanduser()
    dest = paths.cache_dir() / "src" / f"{comp.name}-{comp.version}"
    if (dest / _MARKER).exists():
        return dest
    if not src.is_file():
        raise SystemExit(f"testbed: {archive.env_var}={src} is not a file")
    actual = _sha256(src)
    if actual != archive.sha256:
        raise SystemExit(
            f"testbed: {src} has sha256 {actual}, not the pinned {archive.sha256} of "
            f"{archive.module}@{comp.version}; refusing it"
        )
    _log(f"{comp.name}: unpacking {src} (sha256 checked)")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(src) as tar:
        tar.extractall(tmp, filter="data")
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    root = tops[0] if len(tops) == 1 and not (tmp / "go.mod").exists() else tmp
    if not (root / "go.mod").is_file():
        raise SystemExit(f"testbed: {src} holds no go.mod at its top")
    (root / _MARKER).write_text(json.dumps({"archive": str(src), "sha256": actual}))
    shutil.rmtree(dest, ignore_errors=True)
    root.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _go_default_name(package: str) -> str:
    """The file name ``go build -o DIR/`` gives a main package: its last path element, or the one
    before a major-version suffix (``.../server/v3`` -> ``server``)."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _name_binaries(comp: GoComponent, out: Path) -> None:
    """Several packages built into one folder get Go's default names (``github.com/Kuadrant/
    mcp-gateway/cmd`` -> ``cmd``): rename each to the name it is asked for by. Idempotent, so it
    also repairs a cached folder built before this step existed."""
    if len(comp.packages) == 1:
        return
    for name, package in comp.packages.items():
        built = out / _go_default_name(package)
        if not (out / name).exists() and built.is_file():
            built.rename(out / name)


def build_go(comp: GoComponent, *, force: bool = False) -> Path:
    out = comp.out_dir()
    marker = out / _MARKER
    if marker.exists() and not force:
        _name_binaries(comp, out)
        _log(f"{comp.name} {comp.version}: cached ({out})")
        return out
    if shutil.which("go") is None:
        raise SystemExit(
            "testbed: the Go toolchain is needed to build the components (`go` not found)"
        )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _log(f"{comp.name} {comp.version}: building {', '.join(comp.packages)} (cold: minutes)")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    started = time.monotonic()
    modfile: list[str] = []
    source_root: Path | None = None
    scratch = tempfile.TemporaryDirectory(prefix=f"kmg-{comp.name}-")
    if comp.archive is not None:
        source_root = _module_from_proxy(comp, comp.archive.module, env)
        if source_root is None:
            source_root = _module_from_archive(comp, comp.archive)
            # Build against the unpacked tree: a copy of the wrapper's go.mod with a replace
            # (the wrapper itself stays untouched; go.sum beside the copy pins the dependencies).
            mod = Path(scratch.name) / "go.mod"
            mod.write_text(
                (comp.wrapper / "go.mod").read_text()
                + f"\nreplace {comp.archive.module} => {source_root}\n"
            )
            shutil.copyfile(comp.wrapper / "go.sum", mod.with_suffix(".sum"))
            modfile = [f"-modfile={mod}"]
    # One package: name the binary explicitly (Go would call go.etcd.io/etcd/server/v3 "server").
    target = f"{tmp}/{next(iter(comp.packages))}" if len(comp.packages) == 1 else f"{tmp}/"
    cmd = [
        "go",
        "build",
        "-v",
        "-trimpath",
        "-ldflags=" + " ".join(["-s", "-w", *(f"-X={x}" for x in comp.x_ldflags)]),
        *modfile,
        "-o",
        target,
        *comp.packages.values(),
    ]
    proc = subprocess.Popen(
        cmd, cwd=comp.wrapper, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    compiled, last_report = 0, started
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-40:], line.rstrip()]
        if line.startswith("go: downloading"):
            continue
        compiled += 1
        now = time.monotonic()
        if now - last_report >= 15:
            _log(f"{comp.name}: {compiled} packages compiled, {now - started:.0f}s")
            last_report = now
    if proc.wait() != 0:
        raise SystemExit(
            f"testbed: building {comp.name} {comp.version} failed (exit {proc.returncode}):\n"
            + "\n".join(tail)
        )
    scratch.cleanup()
    _name_binaries(comp, tmp)
    for rel in comp.share:
        assert source_root is not None
        # plain copies: the module cache's files and folders are read-only
        shutil.copytree(
            source_root / rel,
            tmp / "share" / rel,
            copy_function=shutil.copyfile,
            ignore_dangling_symlinks=True,
        )
    for folder, _, _ in os.walk(tmp / "share"):
        Path(folder).chmod(Path(folder).stat().st_mode | 0o200)  # copytree copied r-x
    (tmp / _MARKER).write_text(
        json.dumps({"version": comp.version, "seconds": time.monotonic() - started})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _log(f"{comp.name} {comp.version}: built in {time.monotonic() - started:.0f}s")
    return out


def main(argv: list[str] | None = None) -> int:
    # The non-Go components (Keycloak, Redis, nginx) are listed in provisioners.py, which does
    # not import this module: the dependency goes one way.
    from tests.testbed.provisioners import PROVISIONERS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--only", action="append", default=[], help="component name (repeatable)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    _log(f"cache: {paths.cache_dir()}")
    for comp in GO_COMPONENTS:
        if not args.only or comp.name in args.only:
            build_go(comp, force=args.force)
    for name, provision in PROVISIONERS.items():
        if not args.only or name in args.only:
            provision(args.force)
    _log(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
