"""tools/list that knows the cluster's RBAC (``rbac_list``, off by default).

For each configured MCP server, the tools the user's roles grant are intersected with what the
user's *own* token may do on that server's cluster: a SelfSubjectRulesReview per namespace of the
server's scope, made with the request's bearer token (or the token an RFC 8693 exchange gives for
it, when the cluster accepts only the server's audience). The tools each need are in
:mod:`gateway_plugins.policy.tool_rules`.

* Results are cached per (user, server): the namespace scope is the server's; the user is the
  token's issuer, subject, username and groups (what the API server maps), never the token.
* Single flight: concurrent lists of one user share one review round; the round runs in its own
  task, so a client that goes away does not cancel it for the others.
* Bounded: at most ``max_concurrent_reviews`` calls in flight, ``max_waiting_reviews`` rounds
  queued; beyond that the list is role-only at once.
* Fail soft: a review that fails (API server down or slow, token refused, rules incomplete,
  overloaded) lists the role-derived tools for that server, counts
  ``policy_rbac_list_fallbacks_total{server,reason}`` and logs one WARNING (never the token);
  the failure is remembered ``failure_ttl_s`` so a dead API server is not asked on every list.
  tools/list is a UI filter: tools/call is still decided by the policy and the cluster's RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway_plugins.common.http_client import make_client_session
from gateway_plugins.policy.config import RbacCluster, RbacListSettings, RbacTokenExchange
from gateway_plugins.policy.tool_rules import Rule, filter_tools, parse_rules

log = logging.getLogger(__name__)

REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105

T = TypeVar("T")
RuleSets = tuple[tuple[Rule, ...], ...]  # one per namespace of the scope


class ReviewFailed(Exception):
    """A review round that gave no usable rules; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class RbacMetrics:
    reviews: Counter
    cache: Counter
    fallbacks: Counter
    seconds: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> RbacMetrics:
        return cls(
            Counter(
                "policy_rbac_reviews_total",
                "SelfSubjectRulesReview calls made for tools/list, by server and outcome.",
                ["server", "outcome"],
                registry=registry,
            ),
            Counter(
                "policy_rbac_list_cache_total",
                "Lookups of a user's review results: hit, miss, coalesced (joined a round).",
                ["result"],
                registry=registry,
            ),
            Counter(
                "policy_rbac_list_fallbacks_total",
                "tools/list answered by role only for a server, by reason.",
                ["server", "reason"],
                registry=registry,
            ),
            Histogram(
                "policy_rbac_review_seconds",
                "One review round (exchange and reviews of a server's namespaces).",
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            ),
        )


def user_key(claims: Mapping[str, Any]) -> str:
    """Who the API server will see: issuer, subject, username and groups (not the token)."""
    groups = claims.get("groups")
    parts = {
        "iss": claims.get("iss"),
        "sub": claims.get("sub"),
        "user": claims.get("preferred_username"),
        "groups": sorted(str(g) for g in groups) if isinstance(groups, list) else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Reviewed:
    """A user's rules on one server (one set per namespace) and the lists already filtered
    with them: a warm tools/list costs a dict lookup, not a rule match per tool."""

    __slots__ = ("_memo", "rule_sets")
    MEMO_SIZE = 8  # distinct role-derived lists of one user (a policy change clears the cache)

    def __init__(self, rule_sets: RuleSets) -> None:
        self.rule_sets = rule_sets
        self._memo: dict[tuple[str, ...], list[str]] = {}

    def kept(self, tools: list[str]) -> list[str]:
        key = tuple(tools)
        found = self._memo.get(key)
        if found is None:
            found = filter_tools(tools, self.rule_sets)
            if len(self._memo) >= self.MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return list(found)


@dataclass(frozen=True)
class Filtered:
    """The tools to list, and whether some server fell back to its role-derived list."""

    allowed: dict[str, list[str]]
    degraded: bool


class RbacListFilter:
    """Narrows role-derived tool lists by the cluster's RBAC for the user's own token."""

    def __init__(self, settings: RbacListSettings, metrics: RbacMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clusters = {c.server: c for c in settings.clusters}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._cache: OrderedDict[tuple[str, str], tuple[float, Reviewed | ReviewFailed]] = (
            OrderedDict()
        )
        self._rounds: dict[tuple[str, str], asyncio.Task[Reviewed]] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_reviews)
        self._waiting = 0

    @property
    def ttl_s(self) -> float:
        return self._settings.cache_ttl_s

    async def start(self) -> None:
        """One pooled connection per API server and per exchange endpoint (in the loop)."""
        timeout = self._settings.timeout_s
        for cluster in self._clusters.values():
            self._sessions[cluster.api_server] = make_client_session(
                ca_file=cluster.ca_file, timeout_s=timeout
            )
            exchange = cluster.token_exchange
            if exchange is not None and exchange.url not in self._sessions:
                self._sessions[exchange.url] = make_client_session(
                    ca_file=exchange.ca_file, timeout_s=timeout
                )

    async def close(self) -> None:
        for task in list(self._rounds.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def clear(self) -> None:
        """Forget every result (the policy changed)."""
        self._cache.clear()

    async def filter(
        self, allowed: Mapping[str, list[str]], token: str | None, user: str
    ) -> Filtered:
        """``allowed`` with each configured server's tools narrowed to what RBAC grants."""
        servers = [s for s in allowed if s in self._clusters]
        if not servers:
            return Filtered({s: list(t) for s, t in allowed.items()}, False)
        if len(servers) == 1:  # the common case: no task per list
            results = [await self._reviewed(servers[0], token, user)]
        else:
            results = await asyncio.gather(*(self._reviewed(s, token, user) for s in servers))
        out = {s: list(t) for s, t in allowed.items()}
        degraded = False
        for server, reviewed in zip(servers, results, strict=True):
            if reviewed is None:
                degraded = True
                continue
            out[server] = reviewed.kept(out[server])
        return Filtered(out, degraded)

    async def _reviewed(self, server: str, token: str | None, user: str) -> Reviewed | None:
        key = (user, server)
        outcome = self._cached(key)
        if outcome is None:
            outcome = await self._join_round(key, server, token)
        if isinstance(outcome, ReviewFailed):
            self._metrics.fallbacks.labels(server, outcome.reason).inc()
            return None
        return outcome

    def _cached(self, key: tuple[str, str]) -> Reviewed | ReviewFailed | None:
        entry = self._cache.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        self._cache.move_to_end(key)
        self._metrics.cache.labels("hit").inc()
        return entry[1]

    async def _join_round(
        self, key: tuple[str, str], server: str, token: str | None
    ) -> Reviewed | ReviewFailed:
        task = self._rounds.get(key)
        if task is None:
            self._metrics.cache.labels("miss").inc()
            task = asyncio.create_task(self._round(key, server, token))
            self._rounds[key] = task
            task.add_done_callback(lambda done: self._round_done(key, done))
        else:
            self._metrics.cache.labels("coalesced").inc()
        try:
            return await asyncio.shield(task)
        except ReviewFailed as exc:
            return exc

    def _round_done(self, key: tuple[str, str], task: asyncio.Task[Reviewed]) -> None:
        self._rounds.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: its waiters may all have gone away

    async def _round(self, key: tuple[str, str], server: str, token: str | None) -> Reviewed:
        cluster = self._clusters[server]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                rule_sets = await self._review_all(cluster, token)
        except ReviewFailed as exc:
            self._remember_failure(key, cluster, exc)
            raise
        except TimeoutError:
            failed = ReviewFailed("timeout", f"no answer within {self._settings.timeout_s}s")
            self._remember_failure(key, cluster, failed)
            raise failed from None
        except Exception as exc:  # a bug must not fail tools/list: role-only, and say why
            failed = ReviewFailed("error", f"{type(exc).__name__}")
            log.exception("RBAC review round for server %s failed unexpectedly", server)
            self._remember_failure(key, cluster, failed)
            raise failed from None
        finally:
            self._metrics.seconds.observe(time.perf_counter() - started)
        reviewed = Reviewed(rule_sets)
        self._store(key, reviewed, self._settings.cache_ttl_s)
        return reviewed

    def _remember_failure(
        self, key: tuple[str, str], cluster: RbacCluster, exc: ReviewFailed
    ) -> None:
        log.warning(
            "tools/list of server %s lists its tools by role only: the RBAC review at %s "
            "failed (%s: %s)",
            cluster.server,
            cluster.api_server,
            exc.reason,
            exc.detail,
        )
        if self._settings.failure_ttl_s > 0:
            self._store(key, exc, self._settings.failure_ttl_s)

    def _store(self, key: tuple[str, str], value: Reviewed | ReviewFailed, ttl: float) -> None:
        self._cache[key] = (time.monotonic() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._settings.cache_size:
            self._cache.popitem(last=False)

    async def _review_all(self, cluster: RbacCluster, token: str | None) -> RuleSets:
        if not token:
            raise ReviewFailed("no_token", "the request carried no bearer token")
        if cluster.token_exchange is not None:
            token = await self._slot(self._exchange(cluster.token_exchange, token))
        calls = (self._slot(self._review(cluster, token, ns)) for ns in cluster.namespaces)
        return tuple(await asyncio.gather(*calls))

    async def _slot(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` (a coroutine) in a review slot; refuse when too many wait for one."""
        if self._slots.locked() and self._waiting >= self._settings.max_waiting_reviews:
            call.close()
            raise ReviewFailed(
                "overloaded",
                f"{self._settings.max_concurrent_reviews} review calls in flight and "
                f"{self._waiting} waiting (rbac_list.max_waiting_reviews)",
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        except BaseException:
            call.close()
            raise
        finally:
            self._waiting -= 1
        try:
            return await call
        finally:
            self._slots.release()

    async def _exchange(self, cfg: RbacTokenExchange, token: str) -> str:
        form = {
            "grant_type": EXCHANGE_GRANT,
            "subject_token": token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": cfg.audience,
        }
        secret = cfg.client_secret()
        auth = aiohttp.BasicAuth(cfg.client_id, secret or "") if cfg.client_id else None
        try:
            async with self._sessions[cfg.url].post(
                cfg.url, data=form, auth=auth, allow_redirects=False
            ) as resp:
                status = resp.status
                body = await resp.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, ValueError) as exc:
            raise ReviewFailed(
                "exchange_unavailable", f"token exchange at {cfg.url}: {type(exc).__name__}"
            ) from None
        access = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(access, str) or not access:
            raise ReviewFailed(
                "exchange_refused", f"token exchange at {cfg.url} answered HTTP {status}"
            )
        return access

    async def _review(self, cluster: RbacCluster, token: str, namespace: str) -> tuple[Rule, ...]:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }
        url = cluster.api_server + REVIEW_PATH
        try:
            async with self._sessions[cluster.api_server].post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                allow_redirects=False,
            ) as resp:
                status = resp.status
                doc = await resp.json(content_type=None) if status in (200, 201) else None
        except (aiohttp.ClientError, ValueError) as exc:
            self._metrics.reviews.labels(cluster.server, "unavailable").inc()
            raise ReviewFailed("unavailable", f"{type(exc).__name__}: {exc}") from None
        if status in (401, 403):
            self._metrics.reviews.labels(cluster.server, "refused").inc()
            raise ReviewFailed(
                "refused", f"the API server refused the user's token (HTTP {status})"
            )
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), dict):
            self._metrics.reviews.labels(cluster.server, "unavailable").inc()
            raise ReviewFailed("unavailable", f"the API server answered HTTP {status}")
        review = doc["status"]
        if review.get("incomplete"):
            # Rules are additive, so an incomplete list may miss grants: nothing can be hidden.
            self._metrics.reviews.labels(cluster.server, "incomplete").inc()
            raise ReviewFailed(
                "incomplete",
                f"rules of namespace {namespace} are incomplete: "
                f"{str(review.get('evaluationError') or 'no reason given')[:200]}",
            )
        self._metrics.reviews.labels(cluster.server, "ok").inc()
        return parse_rules(review)
