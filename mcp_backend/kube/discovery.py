"""API discovery per cluster: which kinds exist, their resource names and scopes (CRDs included).

Fetched lazily on the first call that needs it (never at start-up), with the caller's token,
bounded by a timeout, cached with a TTL, single-flight per cluster. An unreachable or huge
cluster therefore never blocks start-up or the other clusters.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp_backend.errors import ClusterError, InvalidArguments, UnknownKind, Unreachable

AGGREGATED_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)

Fetch = Callable[[str, str], Awaitable[Any]]  # (path, accept) -> parsed JSON
UNREACHABLE_HOLD_S = 5.0  # after a failed discovery, fail fast for this long


@dataclass(frozen=True)
class ResourceInfo:
    """One served resource: ``deployments`` of ``apps/v1``, kind Deployment, namespaced."""

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection or of one object (names checked as path segments)."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            prefix += f"/namespaces/{segment(namespace, 'namespace')}"
        prefix += f"/{self.resource}"
        return f"{prefix}/{segment(name, 'name')}" if name else prefix


def segment(value: str, what: str) -> str:
    """``value`` if it is a valid object-name path segment (the API server's own rule: not '.'
    or '..', no '/' or '%'; we also refuse '?', '#' and whitespace); InvalidArguments otherwise."""
    if (
        value in (".", "..")
        or any(c in value for c in "/%?#")
        or not value.isprintable()
        or (any(c.isspace() for c in value))
    ):
        raise InvalidArguments(f"{what} {value!r} is not a valid Kubernetes object name")
    return value


class Discovery:
    """The resources one cluster serves, at one point in time."""

    def __init__(self, resources: list[ResourceInfo], fetched_at: float) -> None:
        self.resources = resources
        self.fetched_at = fetched_at

    def resolve(self, api_version: str, kind: str, cluster: str) -> ResourceInfo:
        """Find ``apiVersion``/``kind``; raise UnknownKind naming the closest served kinds."""
        if not api_version or not kind:
            raise InvalidArguments(
                "both apiVersion (e.g. apps/v1) and kind (e.g. Deployment) are needed"
            )
        group, _, version = api_version.rpartition("/")
        exact = [r for r in self.resources if r.group == group and r.version == version]
        for res in exact:
            if res.kind == kind:
                return res
        for res in exact:
            if kind.lower() in (res.kind.lower(), res.resource, *res.short_names):
                return res
        same_kind = sorted(
            {r.api_version for r in self.resources if r.kind.lower() == kind.lower()}
        )
        if same_kind:
            raise UnknownKind(
                f"cluster {cluster!r} does not serve {kind} as {api_version}; it serves it as "
                f"{', '.join(same_kind)}. Use that apiVersion."
            )
        kinds = sorted({r.kind for r in self.resources})
        near = difflib.get_close_matches(kind, kinds, n=3, cutoff=0.6)  # best match first
        near_full = [
            f"{api} {k}"
            for k in near
            for api in sorted({r.api_version for r in self.resources if r.kind == k})
        ]
        hint = f" Did you mean: {'; '.join(near_full)}?" if near_full else ""
        raise UnknownKind(
            f"cluster {cluster!r} serves no kind {kind!r} in {api_version!r}.{hint} "
            "(CRDs appear once installed; check apiVersion and kind spelling)"
        )


def parse_aggregated(body: Any) -> list[ResourceInfo]:
    """Resources from an ``APIGroupDiscoveryList`` (aggregated discovery v2)."""
    out: list[ResourceInfo] = []
    for group_doc in body.get("items") or []:
        group = (group_doc.get("metadata") or {}).get("name", "")
        for ver in group_doc.get("versions") or []:
            for res in ver.get("resources") or []:
                kind = (res.get("responseKind") or {}).get("kind")
                if not kind:
                    continue
                out.append(
                    ResourceInfo(
                        group=group,
                        version=ver.get("version", ""),
                        resource=res.get("resource", ""),
                        kind=kind,
                        namespaced=res.get("scope") == "Namespaced",
                        verbs=tuple(res.get("verbs") or ()),
                        short_names=tuple(res.get("shortNames") or ()),
                    )
                )
    return out


def parse_resource_list(body: Any) -> list[ResourceInfo]:
    """Resources from a legacy ``APIResourceList`` (``/api/v1``, ``/apis/g/v``)."""
    group, _, version = str(body.get("groupVersion", "")).rpartition("/")
    return [
        ResourceInfo(
            group=group,
            version=version,
            resource=r["name"],
            kind=r.get("kind", ""),
            namespaced=bool(r.get("namespaced")),
            verbs=tuple(r.get("verbs") or ()),
            short_names=tuple(r.get("shortNames") or ()),
        )
        for r in body.get("resources") or []
        if "/" not in r.get("name", "/")
    ]


class DiscoveryCache:
    """Single-flight, TTL-bounded discovery of one cluster."""

    def __init__(self, cluster: str, server: str, ttl_s: float, timeout_s: float) -> None:
        self.cluster, self.server = cluster, server
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self._current: Discovery | None = None
        self._lock = asyncio.Lock()
        self._unreachable: tuple[float, Unreachable] | None = None

    def invalidate(self) -> None:
        self._current = None

    def fresh(self) -> Discovery | None:
        cur = self._current
        if cur is not None and time.monotonic() - cur.fetched_at < self.ttl_s:
            return cur
        return None

    async def get(self, fetch: Fetch) -> Discovery:
        """The cached discovery, refreshed when stale (one fetch at a time per cluster)."""
        cur = self.fresh()
        if cur is not None:
            return cur
        async with self._lock:
            cur = self.fresh()
            if cur is not None:
                return cur
            recent = self._unreachable
            if recent is not None and time.monotonic() - recent[0] < UNREACHABLE_HOLD_S:
                raise recent[1]  # callers queued behind a failed discovery fail fast
            try:
                async with asyncio.timeout(self.timeout_s):
                    resources = await _discover(fetch)
            except TimeoutError:
                failure = Unreachable(
                    f"API discovery of cluster {self.cluster!r} ({self.server}) took longer than "
                    f"{self.timeout_s:g}s; the cluster is slow or unreachable. Retry later."
                )
                self._unreachable = (time.monotonic(), failure)
                raise failure from None
            except Unreachable as exc:
                self._unreachable = (time.monotonic(), exc)
                raise
            self._unreachable = None
            self._current = Discovery(resources, time.monotonic())
            return self._current


async def _discover(fetch: Fetch) -> list[ResourceInfo]:
    core, groups = await asyncio.gather(
        fetch("/api", AGGREGATED_ACCEPT), fetch("/apis", AGGREGATED_ACCEPT)
    )
    if (
        core.get("kind") == "APIGroupDiscoveryList"
        and groups.get("kind") == "APIGroupDiscoveryList"
    ):
        return parse_aggregated(core) + parse_aggregated(groups)
    # Legacy discovery: one request per group version (preferred versions only).
    paths = ["/api/v1"]
    for group in groups.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("groupVersion")
        if preferred:
            paths.append(f"/apis/{preferred}")
    lists = await asyncio.gather(
        *(fetch(p, "application/json") for p in paths), return_exceptions=True
    )
    out: list[ResourceInfo] = []
    for item in lists:
        if isinstance(item, ClusterError):
            continue  # an unavailable aggregated API must not hide the others
        if isinstance(item, BaseException):
            raise item
        out += parse_resource_list(item)
    return out


# Core kinds the hot-path tools use directly (no discovery round trip needed).
POD = ResourceInfo("", "v1", "pods", "Pod", True)
EVENT = ResourceInfo("", "v1", "events", "Event", True)
NAMESPACE = ResourceInfo("", "v1", "namespaces", "Namespace", False)
NODE = ResourceInfo("", "v1", "nodes", "Node", False)
SERVICE = ResourceInfo("", "v1", "services", "Service", True)
