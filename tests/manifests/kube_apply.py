"""Server-side apply (real or ``dryRun=All``) of rendered objects against a testbed API server.

The same request ``kubectl apply --server-side [--dry-run=server]`` sends: ``PATCH`` with
``application/apply-patch+yaml``, ``force=true`` and ``fieldValidation=Strict``, so an unknown or
misspelt field is an error rather than being dropped silently. Resources are found through the API
server's discovery documents, refreshed when a kind is missing (e.g. right after installing CRDs).
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from tests.manifests.rendered_objects import Obj
from tests.testbed.cluster import Cluster

FIELD_MANAGER = "kmg-manifest-tests"
CRD_ESTABLISHED_TIMEOUT = 60.0
# Namespaces the dry-run tests create get this prefix, so they never touch namespaces (and their
# Pod Security labels) that other tests of the session may use on the shared cluster.
NS_PREFIX = "kmgt-"


class ApplyError(RuntimeError):
    """The API server refused an object; ``status`` and the server's message are kept."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.what = what
        self.status = status
        self.message = message


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('apiVersion')} {obj.get('kind')} {ns}{meta.get('name')}"


class KubeApplier:
    """One pooled HTTPS session to ``cluster`` as its admin (client certificate)."""

    def __init__(self, cluster: Cluster) -> None:
        self._server = cluster.server.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=str(cluster.ca_file))
        self._ssl.load_cert_chain(str(cluster.admin_cert.cert), str(cluster.admin_cert.key))
        self._session: aiohttp.ClientSession | None = None
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}
        self.created_namespaces: set[str] = set()  # for the owner to delete when done

    async def __aenter__(self) -> KubeApplier:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        assert self._session is not None, "use KubeApplier as an async context manager"
        data = None if body is None else json.dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(
            method, self._server + path, params=params, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = {"message": text[:500]}
            return resp.status, payload

    # -- discovery ---------------------------------------------------------------------------
    async def _discover(self, api_version: str) -> dict[str, tuple[str, bool]]:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        status, doc = await self._request("GET", path)
        if status == 404:
            return {}
        if status != 200:
            raise ApplyError(f"discovery of {api_version}", status, str(doc.get("message")))
        return {
            r["kind"]: (r["name"], bool(r["namespaced"]))
            for r in doc.get("resources", [])
            if "/" not in r["name"]
        }

    async def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """``(plural, namespaced)`` of a kind, refreshing discovery once when unknown."""
        known = self._resources.get(api_version)
        if known is None or kind not in known:
            known = self._resources[api_version] = await self._discover(api_version)
        if kind not in known:
            raise ApplyError(
                f"{api_version} {kind}", 404, "the API server does not serve this kind"
            )
        return known[kind]

    async def _path(self, obj: Mapping[str, Any]) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = await self.resource(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        name = obj["metadata"]["name"]
        if namespaced:
            namespace = obj["metadata"].get("namespace") or "default"
            return f"{prefix}/namespaces/{namespace}/{plural}/{name}"
        return f"{prefix}/{plural}/{name}"

    # -- apply -------------------------------------------------------------------------------
    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool) -> dict[str, Any]:
        """Server-side apply ``obj``; returns the object the server would store (or stored)."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        status, answer = await self._request(
            "PATCH",
            await self._path(obj),
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        if status not in (200, 201):
            raise ApplyError(describe(obj), status, str(answer.get("message", answer)))
        return answer

    async def create_pod_dry_run(self, namespace: str, pod: Mapping[str, Any]) -> dict[str, Any]:
        """``POST`` a Pod with ``dryRun=All``: admission (Pod Security included) runs for real."""
        status, answer = await self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods",
            params={"dryRun": "All", "fieldValidation": "Strict"},
            body=pod,
        )
        if status not in (200, 201):
            raise ApplyError(describe(pod), status, str(answer.get("message", answer)))
        return answer

    async def install_crds(self, crds: list[dict[str, Any]]) -> None:
        """Apply the CRDs for real and wait until each is Established."""
        for crd in crds:
            await self.apply(crd, dry_run=False)
        deadline = time.monotonic() + CRD_ESTABLISHED_TIMEOUT
        pending = {crd["metadata"]["name"] for crd in crds}
        while pending:
            for name in sorted(pending):
                status, doc = await self._request(
                    "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                )
                conditions = (
                    (doc.get("status") or {}).get("conditions") or [] if status == 200 else []
                )
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    pending.discard(name)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ApplyError(
                    "CRDs " + ", ".join(sorted(pending)), 504, "not Established in time"
                )
            await asyncio.sleep(0.2)
        self._resources.clear()  # new kinds: rediscover

    async def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting for its finalization (404 is fine)."""
        status, answer = await self._request("DELETE", f"/api/v1/namespaces/{name}")
        if status not in (200, 202, 404):
            raise ApplyError(f"v1 Namespace {name}", status, str(answer.get("message", answer)))


def remap_namespaces(objs: list[Obj]) -> tuple[list[Obj], dict[str, Obj | None]]:
    """Copies of ``objs`` in ``NS_PREFIX``-ed namespaces; the namespaces to create (with the
    rendered Namespace object when there is one, so its Pod Security labels apply)."""
    out: list[Obj] = []
    namespaces: dict[str, Obj | None] = {}
    for obj in objs:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if obj["kind"] == "Namespace" and obj["apiVersion"] == "v1":
            meta["name"] = NS_PREFIX + meta["name"]
            namespaces[meta["name"]] = obj
        elif meta.get("namespace"):
            meta["namespace"] = NS_PREFIX + meta["namespace"]
            namespaces.setdefault(meta["namespace"], None)
        out.append(obj)
    return out, namespaces


async def ensure_namespaces(api: KubeApplier, namespaces: Mapping[str, Obj | None]) -> None:
    for name, obj in namespaces.items():
        body = obj or {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await api.apply(body, dry_run=False)
        api.created_namespaces.add(name)


async def dry_run_each(
    api: KubeApplier, objs: list[Obj]
) -> tuple[list[tuple[Obj, Obj]], list[str]]:
    """Server-side dry-run of every object: (object, what the server would store) for each one
    accepted, and the API server's refusals."""
    accepted: list[tuple[Obj, Obj]] = []
    refused: list[str] = []
    for obj in objs:
        try:
            accepted.append((obj, await api.apply(obj, dry_run=True)))
        except ApplyError as exc:
            refused.append(str(exc))
    return accepted, refused
