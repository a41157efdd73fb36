"""Prometheus metrics of the backend, on a registry of its own (several apps per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    """Counters and histograms of one backend instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tool_calls = Counter(
            "kmg_backend_tool_calls_total",
            "Tool calls by tool, cluster (a configured name, or 'unknown' for a context that "
            "names none) and outcome (ok, error, denied, busy)",
            ["tool", "cluster", "outcome"],
            registry=self.registry,
        )
        self.tool_seconds = Histogram(
            "kmg_backend_tool_duration_seconds",
            "Tool call duration, by tool and cluster",
            ["tool", "cluster"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.upstream_requests = Counter(
            "kmg_backend_upstream_requests_total",
            "API server requests by cluster and status class",
            ["cluster", "status"],
            registry=self.registry,
        )
        self.upstream_connections = Counter(
            "kmg_backend_upstream_connections_opened_total",
            "TCP connections opened to API servers",
            ["cluster"],
            registry=self.registry,
        )
        self.upstream_bytes = Counter(
            "kmg_backend_upstream_read_bytes_total",
            "Bytes of API server answers read (bodies and exec output) by cluster",
            ["cluster"],
            registry=self.registry,
        )
        self.unauthenticated = Counter(
            "kmg_backend_unauthenticated_requests_total",
            "Requests refused with 401: no bearer token, or one addressed to someone else",
            registry=self.registry,
        )
        self.host_origin_refused = Counter(
            "kmg_backend_host_origin_refused_total",
            "Requests refused for a Host (host_not_allowed) or Origin (origin_not_allowed) "
            "header the backend does not accept",
            ["reason"],
            registry=self.registry,
        )

        self.mcp_requests = Counter(
            "kmg_backend_mcp_requests_total",
            "POSTs to /mcp by who answered them: 'single_exchange' (in the request's own task) "
            "or 'transport' (the SDK's Streamable HTTP transport)",
            ["path"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The exposition text for ``/metrics``."""
        return generate_latest(self.registry)
