"""The cluster registry: named clusters, each with its pooled client and discovery cache."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kmg_common.tracing import Tracing
from mcp_backend.access.policy import AccessPolicy
from mcp_backend.cluster_config import ClusterConfig
from mcp_backend.config import Settings
from mcp_backend.errors import InvalidArguments
from mcp_backend.helm.api_guard import ApiGuard
from mcp_backend.kube.client import KubeClient
from mcp_backend.kube.discovery import Discovery, DiscoveryCache, ResourceInfo
from mcp_backend.kube.pod_exec import ExecResult, exec_in_pod
from mcp_backend.kube.streams import ListStream
from mcp_backend.kube.token_exchange import TokenExchanger
from mcp_backend.metrics import Metrics


@dataclass
class Cluster:
    """One registered cluster."""

    config: ClusterConfig
    client: KubeClient
    discovery: DiscoveryCache
    ca_file: Path | None = None  # for the helm CLI (HELM_KUBECAFILE)

    @property
    def name(self) -> str:
        return self.config.name

    def public_view(self) -> dict[str, Any]:
        """What ``configuration_view`` shows: no credentials, no CA bytes."""
        view: dict[str, Any] = {"name": self.name, "server": self.config.server}
        if self.config.default:
            view["default"] = True
        for key in ("token_audience", "domain"):
            value = getattr(self.config, key)
            if value:
                view[key] = value
        if self.config.token_exchange is not None:
            view["token_exchange"] = {"audience": self.config.token_exchange.audience}
        view["tls"] = (
            "insecure-skip-verify"
            if self.config.insecure_skip_tls_verify
            else ("custom CA" if self.config.ca_file or self.config.ca_data else "system CAs")
        )
        return view


@dataclass
class Api:
    """A cluster bound to the caller's (possibly exchanged) token: what domain code uses."""

    cluster: Cluster
    token: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.cluster.name

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.cluster.client.request(self.token, method, path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.call("GET", path, **kwargs)

    def stream_list(self, path: str, **kwargs: Any) -> AbstractAsyncContextManager[ListStream]:
        """A list answer read piece by piece (:meth:`KubeClient.stream_list`)."""
        return self.cluster.client.stream_list(self.token, path, **kwargs)

    def stream_text(
        self, path: str, *, params: Mapping[str, str | int]
    ) -> AbstractAsyncContextManager[aiohttp.StreamReader]:
        """A text body read piece by piece (:meth:`KubeClient.stream_text`)."""
        return self.cluster.client.stream_text(self.token, path, params=params)

    async def exec(
        self,
        namespace: str,
        pod: str,
        command: list[str],
        container: str | None,
        timeout_s: float,
    ) -> ExecResult:
        """Run ``command`` in a pod's container (:func:`~mcp_backend.kube.pod_exec.exec_in_pod`)."""
        return await exec_in_pod(
            self.cluster.client, self.token, namespace, pod, command, container, timeout_s
        )

    def helm_guard(self) -> ApiGuard:
        """The local API proxy the helm CLI talks through (this cluster's session: its pool,
        and its access control)."""
        return ApiGuard(self.cluster.client.session())

    def check_object(self, group: str, resource: str, obj: Mapping[str, Any], what: str) -> None:
        """Refuse an object the access policy forbids even though its kind is allowed: an early
        refusal with the tool's words, before any call (the session's access control enforces
        the same rule on the request itself)."""
        self.cluster.client.access.check_object(group, resource, obj, what)

    def forget_discovery(self) -> None:
        """Drop this cluster's cached discovery (a new API group was seen)."""
        self.cluster.discovery.invalidate()

    async def discovery(self) -> Discovery:
        async def fetch(path: str, accept: str) -> Any:
            return await self.cluster.client.request(self.token, "GET", path, accept=accept)

        return await self.cluster.discovery.get(fetch)

    async def resolve(self, api_version: str, kind: str) -> ResourceInfo:
        """Resolve a kind, checked against the access policy before any call on it (an early
        refusal naming the kind; every request on it is admitted by the session's access
        control all the same)."""
        disc = await self.discovery()
        info = disc.resolve(api_version, kind, self.name)
        self.cluster.client.access.check_kind(info.group, info.kind, info.resource)
        return info


class ClusterRegistry:
    """All clusters of the backend; one client (connection pool) each, shared by all requests."""

    def __init__(
        self,
        configs: list[ClusterConfig],
        settings: Settings,
        access: AccessPolicy,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.access = access
        self._tmp = tempfile.TemporaryDirectory(prefix="mcp-backend-")
        self.clusters: dict[str, Cluster] = {}
        self.exchanger = TokenExchanger(tracing)
        for cfg in configs:
            self.clusters[cfg.name] = Cluster(
                config=cfg,
                client=KubeClient(cfg, settings, access, metrics, tracing),
                discovery=DiscoveryCache(
                    cfg.name, cfg.server, settings.discovery_ttl_s, settings.discovery_timeout_s
                ),
                ca_file=self._ca_file(cfg),
            )
        self.default = next(c for c in self.clusters.values() if c.config.default)

    def _ca_file(self, cfg: ClusterConfig) -> Path | None:
        if cfg.ca_file is not None and not cfg.ca_data:
            return cfg.ca_file
        pem = cfg.ca_pem()
        if pem is None:
            return None
        path = Path(self._tmp.name) / f"ca-{len(self.clusters)}.pem"
        path.write_text(pem, encoding="utf-8")
        return path

    def get(self, context: str | None) -> Cluster:
        """The cluster named ``context`` (the default when empty); a clear error otherwise."""
        if not context:
            return self.default
        cluster = self.clusters.get(context)
        if cluster is None:
            raise InvalidArguments(
                f"unknown context {context!r}; available: {', '.join(sorted(self.clusters))} "
                "(configuration_contexts_list shows them)"
            )
        return cluster

    async def bind(self, context: str | None, token: str) -> Api:
        """The cluster for ``context`` with the token it accepts (exchanged when configured)."""
        cluster = self.get(context)
        exchange = cluster.config.token_exchange
        if exchange is not None:
            token = await self.exchanger.exchange(exchange, token, cluster.name)
        return Api(cluster, token)

    def connections_opened(self) -> int:
        return sum(c.client.connections_opened for c in self.clusters.values())

    async def close(self) -> None:
        for cluster in self.clusters.values():
            await cluster.client.close()
        await self.exchanger.close()
        self._tmp.cleanup()
