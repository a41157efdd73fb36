"""Run the container of a Deployment as a local process: the testbed plays the kubelet's part for
one pod whose spec a chart or a controller wrote (the MCP Gateway's controller and the broker/router
Deployment that controller creates).

Everything that differs between the pod spec and the process is an explicit table
(:class:`PodMapping`); the rest of the command line and environment is the spec's, unchanged:

* the image's executable (``command[0]``, e.g. ``./mcp_gateway``) → a testbed binary;
* a flag's value (``--name=...``), e.g. an address the pod binds on all interfaces of its own
  network namespace → a free ``127.0.0.1`` port; flags the pod leaves at such a default → added;
* a path under a volume's ``mountPath`` → the same path under a local copy of that volume
  (Secret and ConfigMap volumes are copied from the API server key by key, files mode 0600);
* environment: ``value`` as is; ``valueFrom.secretKeyRef`` / ``configMapKeyRef`` read from the
  API server; ``valueFrom.fieldRef`` ``metadata.namespace`` / ``metadata.name`` = the pod's.

Ports, probes and resources are not emulated; the caller waits for readiness itself.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

Obj = dict[str, Any]


class PodSpecError(RuntimeError):
    """The pod spec uses something this emulation does not provide; the message says what."""


@dataclass(frozen=True)
class PodMapping:
    """What changes between the container spec and the local process (see the module doc)."""

    executables: Mapping[str, Path]
    flag_values: Mapping[str, str] = field(default_factory=dict)
    extra_flags: Sequence[str] = ()


@dataclass
class PodProcess:
    """The local equivalent of one container: argv, environment, local copies of its volumes."""

    argv: list[str]
    env: dict[str, str]
    volumes: dict[str, Path]  # mountPath -> local folder
    replaced: dict[str, tuple[str, str]]  # what the mapping changed: item -> (spec, local)


def container(deployment: Mapping[str, Any], name: str | None = None) -> Obj:
    """The named container of a Deployment (API spelling), or its only one."""
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    hits = [c for c in containers if name is None or c["name"] == name]
    if len(hits) != 1:
        raise PodSpecError(f"expected one container {name or ''} in the pod, found {len(hits)}")
    return hits[0]


async def _secret_data(core: k8s.CoreV1Api, namespace: str, name: str) -> dict[str, bytes]:
    secret = await core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


async def _config_map_data(core: k8s.CoreV1Api, namespace: str, name: str) -> dict[str, bytes]:
    cm = await core.read_namespaced_config_map(name, namespace)
    return {k: v.encode() for k, v in (cm.data or {}).items()}


async def _env(core: k8s.CoreV1Api, namespace: str, pod_name: str, spec: Obj) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = var["value"]
            continue
        source = var.get("valueFrom") or {}
        if ref := source.get("secretKeyRef"):
            data = await _secret_data(core, namespace, ref["name"])
        elif ref := source.get("configMapKeyRef"):
            data = await _config_map_data(core, namespace, ref["name"])
        elif ref := source.get("fieldRef"):
            fields = {"metadata.namespace": namespace, "metadata.name": pod_name}
            if ref["fieldPath"] not in fields:
                raise PodSpecError(f"env {name}: fieldRef {ref['fieldPath']} is not emulated")
            env[name] = fields[ref["fieldPath"]]
            continue
        else:
            raise PodSpecError(f"env {name}: source {sorted(source)} is not emulated")
        if ref["key"] not in data:
            raise PodSpecError(f"env {name}: {ref['name']} has no key {ref['key']!r}")
        env[name] = data[ref["key"]].decode()
    return env


async def _volumes(
    core: k8s.CoreV1Api, namespace: str, pod: Obj, spec: Obj, workdir: Path
) -> dict[str, Path]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    local: dict[str, Path] = {}
    for mount in spec.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if secret := volume.get("secret"):
            data = await _secret_data(core, namespace, secret["secretName"])
        elif config_map := volume.get("configMap"):
            data = await _config_map_data(core, namespace, config_map["name"])
        else:
            raise PodSpecError(f"volume {mount['name']}: only Secret/ConfigMap are emulated")
        folder = workdir / "volumes" / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        for key, value in data.items():
            path = folder / key
            path.write_bytes(value)
            path.chmod(0o600)
        local[mount["mountPath"].rstrip("/")] = folder
    return local


def _map_arg(arg: str, mapping: PodMapping, volumes: Mapping[str, Path]) -> str:
    flag, eq, _ = arg.partition("=")
    if eq and flag in mapping.flag_values:
        return f"{flag}={mapping.flag_values[flag]}"
    for mount, folder in volumes.items():
        arg = arg.replace(f"={mount}/", f"={folder}/")
        if arg.startswith(f"{mount}/"):
            arg = f"{folder}/{arg[len(mount) + 1 :]}"
    return arg


async def materialize(
    api: k8s.ApiClient,
    deployment: Mapping[str, Any],
    mapping: PodMapping,
    workdir: Path,
    *,
    container_name: str | None = None,
) -> PodProcess:
    """The process equivalent of ``deployment``'s container (volumes copied under ``workdir``)."""
    core = k8s.CoreV1Api(api)
    meta = deployment["metadata"]
    namespace = meta["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment, container_name)
    command = [*spec.get("command", []), *spec.get("args", [])]
    if not command:
        raise PodSpecError(f"{meta['name']}: no command in the spec (the image's is unknown)")
    if command[0] not in mapping.executables:
        raise PodSpecError(f"{meta['name']}: no local binary for the image's {command[0]!r}")
    volumes = await _volumes(core, namespace, pod, spec, workdir)
    argv = [str(mapping.executables[command[0]])]
    replaced = {"executable": (command[0], argv[0])}
    for arg in command[1:]:
        local = _map_arg(arg, mapping, volumes)
        if local != arg:
            replaced[arg.partition("=")[0]] = (arg, local)
        argv.append(local)
    given = {a.partition("=")[0] for a in argv[1:]}
    for extra in mapping.extra_flags:
        if extra.partition("=")[0] in given:
            raise PodSpecError(f"{meta['name']}: the spec already sets {extra.partition('=')[0]}")
        argv.append(extra)
        replaced[extra.partition("=")[0]] = ("(default)", extra)
    env = await _env(core, namespace, f"{meta['name']}-local", spec)
    return PodProcess(argv=argv, env=env, volumes=volumes, replaced=replaced)
