"""Prometheus metrics of the token exchange service, registered in the app's own registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ExchangeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "token_exchange_requests_total",
            "Token requests by target and outcome (hit, miss, coalesced, unchanged, refused, "
            "invalid_token, unavailable, unknown_target, not_routable).",
            ["target", "outcome"],
            registry=registry,
        )
        self.sts_calls = Counter(
            "token_exchange_sts_calls_total",
            "Calls to a token endpoint (Keycloak), by STS name, grant and result.",
            ["sts", "grant", "result"],
            registry=registry,
        )
        self.sts_latency = Histogram(
            "token_exchange_sts_call_duration_seconds",
            "Latency of token endpoint calls.",
            ["sts", "grant"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.policy_calls = Counter(
            "token_exchange_policy_calls_total",
            "Calls of the combined check to the policy service, by result (allow, deny, "
            "bad_request, token_refused, caller_refused, error, timeout, unreachable, "
            "not_configured).",
            ["result"],
            registry=registry,
        )
        self.policy_latency = Histogram(
            "token_exchange_policy_call_duration_seconds",
            "Latency of the combined check's policy service calls.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._outcome_children: dict[tuple[str, str], Any] = {}
        self.cache_entries = Gauge(
            "token_exchange_cache_entries", "Tokens currently cached.", registry=registry
        )
        self.shared_cache = Counter(
            "token_exchange_shared_cache_total",
            "Shared (Redis) cache lookups of memory-cache misses, by result: hit (in Redis), "
            "waited (another replica's exchange), stored (this replica exchanged and shared "
            "it), wait_timeout (exchanged here after waiting lock_wait_s), fallback (Redis "
            "failed or is being skipped: this replica's own exchange), undecryptable.",
            ["result"],
            registry=registry,
        )
        self.shared_cache_up = Gauge(
            "token_exchange_shared_cache_up",
            "1 while the shared (Redis) cache is used, 0 while this replica skips it after a "
            "failure.",
            registry=registry,
        )
        self._shared_children: dict[str, Any] = {}

    def count(self, target: str, outcome: str) -> None:
        child = self._outcome_children.get((target, outcome))
        if child is None:
            child = self.outcomes.labels(target, outcome)
            self._outcome_children[(target, outcome)] = child
        child.inc()

    def shared_count(self, result: str) -> None:
        child = self._shared_children.get(result)
        if child is None:
            child = self._shared_children[result] = self.shared_cache.labels(result)
        child.inc()

    def sts_call_count(self, sts: str | None = None) -> float:
        """Total STS calls so far (all results), optionally for one STS."""
        total = 0.0
        for metric in self.sts_calls.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and (sts is None or sample.labels["sts"] == sts):
                    total += sample.value
        return total

    def policy_call_count(self, result: str | None = None) -> float:
        """Policy service calls so far, optionally of one result."""
        total = 0.0
        for metric in self.policy_calls.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and (
                    result is None or sample.labels["result"] == result
                ):
                    total += sample.value
        return total
