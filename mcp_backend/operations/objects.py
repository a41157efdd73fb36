"""Generic operations on one object of any served kind: get, delete, scale, and a pod's log.

Domain layer between the thin tool handlers and the API client; lists are in
:mod:`mcp_backend.operations.listing`, applying manifests in :mod:`mcp_backend.operations.apply`.
"""

from __future__ import annotations

from typing import Any

from mcp_backend.errors import NotFound
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import POD, ResourceInfo
from mcp_backend.rendering.output import ToolOutput, to_yaml, truncate


async def get_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None
) -> dict[str, Any]:
    """One object as parsed JSON (Secrets already redacted by the access layer)."""
    obj: dict[str, Any] = await api.get(info.path(namespace if info.namespaced else None, name))
    return obj


def object_yaml(obj: dict[str, Any], max_chars: int) -> ToolOutput:
    text, _ = truncate(to_yaml(obj), max_chars, "Ask for a narrower object or use resources_list")
    return ToolOutput(text=text)


async def delete_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None, grace: int | None
) -> str:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if grace is not None:
        body["gracePeriodSeconds"] = grace
    ns = namespace if info.namespaced else None
    await api.call("DELETE", info.path(ns, name), body=body)
    where = f" in namespace {ns!r}" if ns else ""
    return f"{info.kind} {name!r}{where} deleted on cluster {api.name!r}.\n"


async def scale_object(
    api: Api, info: ResourceInfo, name: str, namespace: str | None, replicas: int | None
) -> ToolOutput:
    ns = namespace if info.namespaced else None
    path = info.path(ns, name) + "/scale"
    try:
        if replicas is None:
            scale = await api.get(path)
        else:
            scale = await api.call(
                "PATCH",
                path,
                body={"spec": {"replicas": replicas}},
                content_type="application/merge-patch+json",
            )
    except NotFound as exc:
        if "scale" in exc.message and info.kind not in exc.message:
            raise
        raise NotFound(
            f"{info.kind} {name!r} not found, or {info.kind} has no scale subresource "
            f"(cluster {api.name!r}): {exc.message}",
            status=404,
        ) from None
    spec = (scale.get("spec") or {}).get("replicas", 0)
    status = (scale.get("status") or {}).get("replicas", 0)
    verb = "scaled to" if replicas is not None else "has"
    text = f"{info.kind} {name!r} {verb} {spec} desired replicas ({status} current).\n"
    return ToolOutput(
        text=text,
        structured={
            "kind": info.kind,
            "name": name,
            "namespace": ns,
            "replicas": spec,
            "currentReplicas": status,
        },
    )


async def read_log(
    api: Api,
    namespace: str,
    name: str,
    *,
    container: str | None,
    previous: bool,
    tail: int | None,
    limit_bytes: int,
    since_seconds: int | None = None,
    since_time: str | None = None,
) -> str:
    params: dict[str, str | int] = {"limitBytes": limit_bytes}
    if container:
        params["container"] = container
    if previous:
        params["previous"] = "true"
    if tail:
        params["tailLines"] = tail
    if since_seconds is not None:
        params["sinceSeconds"] = since_seconds
    if since_time is not None:
        params["sinceTime"] = since_time
    text: str = await api.get(
        POD.path(namespace, name) + "/log",
        params=params,
        text=True,
        accept="text/plain,application/json",
    )
    return text
