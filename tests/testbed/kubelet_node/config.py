"""The real kubelet node's configuration: the ``KubeletConfiguration`` and containerd's
``containerd.toml`` (a data file next to this module, its ``@NAME@`` placeholders filled with
the node's paths)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.testbed import placeholders
from tests.testbed.cluster import HOST
from tests.testbed.pki import CertPair

CONTAINERD_TEMPLATE = Path(__file__).with_name("containerd.toml")


def kubelet_configuration(
    *,
    port: int,
    healthz_port: int,
    serving: CertPair,
    client_ca_file: Path,
    runtime_endpoint: str,
    taint: Mapping[str, str],
) -> dict[str, Any]:
    """The ``KubeletConfiguration``: TLS and webhook auth like a kubeadm node, the node log query
    on, this machine's constraints (cgroup v1, no systemd, no cgroups, no iptables), ``taint``
    registered (ordinary test pods stay off the node)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": HOST,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": runtime_endpoint,
        "imageServiceEndpoint": runtime_endpoint,
        "registerWithTaints": [dict(taint)],
        # /logs/: the node log query (feature NodeLogQuery, GA and locked on in v1.36).
        "enableSystemLogHandler": True,
        "enableSystemLogQuery": True,
        # This machine: cgroup v1 (hybrid), maybe swap, no systemd.
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "resolvConf": "",
        "staticPodPath": "",
        "serializeImagePulls": True,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # No pods run here; eviction would only ever remove images.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%"},
        "shutdownGracePeriod": "0s",
        # Otherwise it adds KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains to the machine's
        # iptables (when iptables is installed), for kube-proxy's benefit.
        "makeIPTablesUtilChains": False,
    }


def containerd_config(*, root: Path, state: Path, socket: Path, node_dir: Path) -> str:
    """``containerd.toml`` with the node's paths (each a TOML basic string)."""
    values = {
        "ROOT": root,
        "STATE": state,
        "SOCKET": socket,
        "TTRPC_SOCKET": f"{socket}.ttrpc",
        "OPT_DIR": node_dir / "opt-containerd",
        "CDI_DIR": node_dir / "cdi",
        "CNI_BIN_DIR": node_dir / "cni-bin",
        "CNI_CONF_DIR": node_dir / "cni-net.d",
    }
    toml_strings = {key: json.dumps(str(value)) for key, value in values.items()}
    return placeholders.fill(CONTAINERD_TEMPLATE, toml_strings)
