"""The status a Gateway API implementation (Istio) writes, written by the testbed in its place.

The MCP Gateway's controller only uses routes that a gateway has accepted (an HTTPRoute's
``status.parents[].conditions`` with ``Accepted=True``) and reports on a Gateway's listener status
entries, which it never creates ("we don't own the gateway"). The testbed has no Istio (neither
istiod nor its install can be fetched here), so :func:`program_gateway` and :func:`accept_route`
write what istiod writes for a valid Gateway and route: the Gateway ``Accepted`` and
``Programmed``, one status entry per listener (``Accepted``, ``Programmed``, ``ResolvedRefs``;
HTTPRoute as supported kind), and for each of a route's parents ``Accepted`` and ``ResolvedRefs``
with Istio's controller name.

It decides nothing: hostnames, ``allowedRoutes`` and ReferenceGrants are not evaluated, so no
test may rely on it to refuse anything. Status is written with merge patches on the ``status``
subresource; a later write of the MCP Gateway's controller (its own conditions) is kept when
nothing here writes again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from tests.testbed.cluster import Cluster

GROUP = "gateway.networking.k8s.io"
CONTROLLER_NAME = "istio.io/gateway-controller"
ISTIO_SERVICE_ADDRESS = "10.96.80.80"  # what Istio reports: its gateway Service's ClusterIP


class StatusWriteError(RuntimeError):
    """The API server refused a status write; the message carries its answer."""


def _condition(kind: str, reason: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": f"{reason} (written by the testbed in place of Istio)",
        "observedGeneration": generation,
        "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def _get(cluster: Cluster, path: str) -> dict[str, Any]:
    status, text = await asyncio.to_thread(cluster.admin_request, "GET", path)
    if status != 200:
        raise StatusWriteError(f"GET {path}: HTTP {status}: {text[:300]}")
    return dict(json.loads(text))


async def _patch_status(cluster: Cluster, path: str, status: Mapping[str, Any]) -> None:
    code, text = await asyncio.to_thread(
        cluster.admin_request,
        "PATCH",
        f"{path}/status",
        {"status": dict(status)},
        content_type="application/merge-patch+json",
    )
    if code != 200:
        raise StatusWriteError(f"PATCH {path}/status: HTTP {code}: {text[:500]}")


def _path(kind: str, namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/v1/namespaces/{namespace}/{kind}/{name}"


async def program_gateway(
    cluster: Cluster, namespace: str, name: str, *, attached_routes: Mapping[str, int]
) -> dict[str, Any]:
    """Gateway ``namespace/name`` accepted and programmed, with a status entry per listener
    (``attached_routes``: listener name -> count; 0 for those not given). Returns the Gateway."""
    path = _path("gateways", namespace, name)
    gateway = await _get(cluster, path)
    generation = int(gateway["metadata"]["generation"])
    listeners = [
        {
            "name": listener["name"],
            "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}],
            "attachedRoutes": attached_routes.get(listener["name"], 0),
            "conditions": [
                _condition("Accepted", "Accepted", generation),
                _condition("Programmed", "Programmed", generation),
                _condition("ResolvedRefs", "ResolvedRefs", generation),
            ],
        }
        for listener in gateway["spec"]["listeners"]
    ]
    await _patch_status(
        cluster,
        path,
        {
            "addresses": [{"type": "IPAddress", "value": ISTIO_SERVICE_ADDRESS}],
            "conditions": [
                _condition("Accepted", "Accepted", generation),
                _condition("Programmed", "Programmed", generation),
            ],
            "listeners": listeners,
        },
    )
    return await _get(cluster, path)


async def accept_route(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """HTTPRoute ``namespace/name`` accepted by every Gateway it names. Returns the route."""
    path = _path("httproutes", namespace, name)
    route = await _get(cluster, path)
    generation = int(route["metadata"]["generation"])
    parents = [
        {
            "parentRef": {
                "group": ref.get("group", GROUP),
                "kind": ref.get("kind", "Gateway"),
                "name": ref["name"],
                "namespace": ref.get("namespace", namespace),
                **({"sectionName": ref["sectionName"]} if "sectionName" in ref else {}),
            },
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                _condition("Accepted", "Accepted", generation),
                _condition("ResolvedRefs", "ResolvedRefs", generation),
            ],
        }
        for ref in route["spec"]["parentRefs"]
    ]
    await _patch_status(cluster, path, {"parents": parents})
    return await _get(cluster, path)
