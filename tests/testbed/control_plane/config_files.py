"""The configuration files a testbed cluster's processes read: the API server's
``AuthenticationConfiguration``, ``TracingConfiguration`` and ``EgressSelectorConfiguration``,
kubeconfigs, the fake containers' log and kwok's ``--config`` (built from the kwok resources in
``kwok/`` next to this module, whose ``@NAME@`` placeholders take the constants of
:mod:`tests.testbed.cluster`)."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import placeholders
from tests.testbed.cluster import (
    FAKE_LOG_LINES,
    NODE_BASE_CPU_CORES,
    NODE_BASE_MEMORY_BYTES,
    SCRIPTED_CONTAINER,
    USAGE_CPU_ANNOTATION,
    USAGE_MEMORY_ANNOTATION,
    JWTIssuer,
    scripted_log_path,
)
from tests.testbed.pki import CertPair


def tracing_configuration(endpoint: str) -> dict[str, Any]:
    """The API server's ``TracingConfiguration`` (apiserver.config.k8s.io/v1): OTLP/gRPC to
    ``endpoint``, every request sampled.

    Why every request: the API server continues a caller's ``traceparent`` only for callers in
    ``system:masters`` or ``system:monitoring``; for everyone else (our users) it starts a new
    trace whose root span *links* to the caller's span, and that new root is sampled by this
    rate alone (parent-based sampling has no parent to follow)."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "TracingConfiguration",
        "endpoint": endpoint,
        "samplingRatePerMillion": 1_000_000,
    }


def authentication_configuration(issuers: Sequence[JWTIssuer]) -> dict[str, Any]:
    """The structured ``AuthenticationConfiguration`` (apiserver.config.k8s.io/v1) file content."""
    jwt: list[dict[str, Any]] = []
    for issuer in issuers:
        if not issuer.audiences:
            raise ValueError(f"JWT issuer {issuer.url}: at least one audience is required")
        spec: dict[str, Any] = {"url": issuer.url, "audiences": list(issuer.audiences)}
        if len(issuer.audiences) > 1:
            spec["audienceMatchPolicy"] = "MatchAny"
        if issuer.ca_file is not None:
            spec["certificateAuthority"] = issuer.ca_file.read_text()
        jwt.append(
            {
                "issuer": spec,
                "claimMappings": {
                    # prefix is required whenever claim is set; "" means no prefix
                    "username": {"claim": issuer.username_claim, "prefix": issuer.username_prefix},
                    "groups": {"claim": issuer.groups_claim, "prefix": issuer.groups_prefix},
                },
            }
        )
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "jwt": jwt,
    }


def write_kubeconfig(path: Path, name: str, server: str, ca_file: Path, pair: CertPair) -> Path:
    """A kubeconfig at ``path`` (mode 0600) for ``server`` as the client certificate ``pair``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [
            {
                "name": pair.cert.stem,
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": pair.cert.stem}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def write_fake_log(path: Path) -> None:
    """The CRI-format log kwok serves for every fake container: :data:`FAKE_LOG_LINES`."""
    start = dt.datetime.now(dt.UTC)
    lines = []
    for i, message in enumerate(FAKE_LOG_LINES):
        stamp = (start + dt.timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines.append(f"{stamp} stdout F {message}\n")
    path.write_text("".join(lines))


def socket_path(preferred: Path) -> Path:
    """``preferred``, or a path in a fresh private temp dir when it is too long for a socket."""
    if len(os.fsencode(preferred)) < 100:  # sun_path holds 108 bytes
        return preferred
    return Path(tempfile.mkdtemp(prefix="kmg-egress-")) / "egress.sock"


def egress_selector_configuration(uds: Path) -> dict[str, Any]:
    """kube-apiserver's egress: cluster traffic through the HTTP CONNECT proxy on a socket."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(uds)}},
                },
            }
        ],
    }


def kwok_config(log_file: Path, exec_dir: Path) -> str:
    """kwok's --config: stages for fake nodes and pods, ClusterLogs and ClusterExec, and the
    resource metrics emulation (Metric + ClusterResourceUsage) metrics-server scrapes."""
    cluster_logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": "all-pods"},
        "spec": {
            "logs": [
                {"logsFile": str(log_file), "follow": False},
                {
                    "containers": [SCRIPTED_CONTAINER],
                    "logsFile": str(scripted_log_path(log_file)),
                    "follow": False,
                },
            ]
        },
    }
    cluster_exec = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterExec",
        "metadata": {"name": "all-pods"},
        "spec": {
            "execs": [
                {"local": {"workDir": str(exec_dir), "envs": [{"name": "KWOK_EXEC", "value": "1"}]}}
            ]
        },
    }
    docs = [
        yaml.safe_dump(cluster_logs),
        yaml.safe_dump(cluster_exec),
        kwok_file("metrics-resource.yaml"),
        kwok_file("usage-from-annotation.yaml"),
        kwok_file("stages.yaml"),
    ]
    return "---\n".join(docs)


KWOK_DIR = Path(__file__).with_name("kwok")
# the constants the kwok files name as @NAME@
_KWOK_VALUES = {
    "NODE_BASE_CPU_CORES": repr(NODE_BASE_CPU_CORES),
    "NODE_BASE_MEMORY_BYTES": str(NODE_BASE_MEMORY_BYTES),
    "USAGE_CPU_ANNOTATION": USAGE_CPU_ANNOTATION,
    "USAGE_MEMORY_ANNOTATION": USAGE_MEMORY_ANNOTATION,
}


def kwok_file(name: str) -> str:
    """A kwok configuration file of ``kwok/`` (next to this module), ``@NAME@`` values filled."""
    return placeholders.fill(KWOK_DIR / name, _KWOK_VALUES)
