"""What the real MCP Gateway controller keeps on cluster A, as the tests read it: the names it
uses, the conditions of its custom objects, the broker configuration Secret it writes, and
polling until it has done something.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from tests.manifests.rendered_objects import Obj, find

GROUP, VERSION = "mcp.kuadrant.io", "v1"
WAIT = 90.0
CONFIG_SECRET = ("mcp-system", "mcp-gateway-config")
BROKER_DEPLOYMENT = ("mcp-system", "mcp-gateway")  # named by the controller (broker_router.go)
GATEWAY = ("gateway-system", "mcp-gateway")
# The only change between the broker config the controller wrote and the one the broker runs on:
# the in-cluster URL of mcp-backend's Service (no cluster DNS here) -> the testbed's mcp-backend.
SERVICE_URL = "http://mcp-backend.kmg-system.svc.cluster.local:8080"
# The broker's own meta-tools (internal/broker: discovery.go, tags_handler.go), listed beside the
# upstream servers' tools.
BROKER_META_TOOLS = {"discover_tools", "select_tools", "list_tags", "filter_tools_by_tags"}
# The testbed Redis' database for the broker run as the controller's pod (the replicated local
# gateway uses 2, the token exchange 0): its connections are told apart by it.
SESSION_STORE_DB = 3


async def wait_for(
    what: str, probe: Callable[[], Any], *, within: float = WAIT, log: Callable[[], str] = str
) -> Any:
    """Poll the async ``probe`` until it returns something truthy; fail with ``what`` and the
    last value seen (and the controller's log tail) otherwise."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} not within {within:.0f}s; last seen: {last!r}\n{log()}")


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


async def get_custom(api: k8s.ApiClient, plural: str, namespace: str, name: str) -> Obj:
    return dict(
        await k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    )


async def broker_config(api: k8s.ApiClient) -> dict[str, Any]:
    secret = await k8s.CoreV1Api(api).read_namespaced_secret(CONFIG_SECRET[1], CONFIG_SECRET[0])
    return dict(yaml.safe_load(base64.b64decode(secret.data["config.yaml"])))


def discovery_credential(gateway_objects: list[Obj]) -> str:
    """The value of the Secret our MCPServerRegistration names as its credentialRef."""
    reg = find(gateway_objects, "MCPServerRegistration")
    ref = reg["spec"]["credentialRef"]
    secret = next(
        o
        for o in gateway_objects
        if o["kind"] == "Secret"
        and o["metadata"]["name"] == ref["name"]
        and o["metadata"]["namespace"] == reg["metadata"]["namespace"]
    )
    return str(secret["stringData"][ref["key"]])


def servers_by_name(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in config.get("servers") or []}


def env_refs(deployment: Any) -> dict[str, tuple[str, str]]:
    """The broker container's env vars read from Secrets: name -> (Secret, key)."""
    (container,) = deployment.spec.template.spec.containers
    return {
        e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
        for e in container.env or []
        if e.value_from is not None and e.value_from.secret_key_ref is not None
    }
