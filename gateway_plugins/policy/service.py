"""The policy service's decision core: token → claims → input → engine → answer.

:class:`PolicyService` verifies tokens, asks the engine, signs the per-user lists and records each
decision (metrics, trace attributes, decision log). It knows no HTTP routes: those are in
:mod:`.routes`, the assembly in :mod:`.app`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway_plugins.common.jwt_validation import InvalidToken, JWTValidator, ValidationUnavailable
from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.decision_log import DecisionLog
from gateway_plugins.policy.engines import DecisionEngine, EngineUnavailable, PolicyError
from gateway_plugins.policy.input import Catalogue
from gateway_plugins.policy.policy_source import PolicySource
from gateway_plugins.policy.rbac_list import RbacListFilter, user_key
from gateway_plugins.policy.reloader import PolicyReloader
from gateway_plugins.policy.wristband import SignedList, WristbandSigner, compact_json
from kmg_common import tracing as kt
from kmg_common.bearer import bearer_token
from kmg_common.logging import trace_id_var

_WRISTBAND_CACHE_SIZE = 10_000
_T = TypeVar("_T")


class Refusal(Exception):
    """A request answered with ``allow: false`` before or instead of a policy decision."""

    def __init__(self, status: int, reason: str, *, error: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error


@dataclass
class ServiceMetrics:
    """The service's own metrics: decisions by endpoint and outcome, time in the engine."""

    decisions: Counter
    engine_seconds: Histogram

    @classmethod
    def register(cls, registry: Any) -> ServiceMetrics:
        return cls(
            Counter(
                "policy_decisions_total",
                "Decisions, by endpoint and outcome.",
                ["endpoint", "decision"],
                registry=registry,
            ),
            Histogram(
                "policy_engine_seconds",
                "Time in the decision engine, by entrypoint.",
                ["entrypoint"],
                registry=registry,
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            ),
        )


@dataclass
class PolicyService:
    """The pure-ish core the routes call: token → claims → input → engine → answer."""

    settings: PolicySettings
    engine: DecisionEngine
    validator: JWTValidator
    signer: WristbandSigner | None
    decisions: DecisionLog
    catalogue: Catalogue | None
    metrics: ServiceMetrics
    rbac: RbacListFilter | None = None
    _wristbands: OrderedDict[str, tuple[float, SignedList]] = field(default_factory=OrderedDict)
    _policy_generation: int = 0

    def policy_changed(self, source: PolicySource) -> None:
        """A reload put ``source`` in force: nothing computed from the old policy is reused."""
        self._policy_generation += 1
        self._wristbands.clear()
        if self.rbac is not None:
            self.rbac.clear()
        self.catalogue = source.catalogue

    # -- tokens --------------------------------------------------------------------------------
    async def claims_of(self, authorization: str | None) -> dict[str, Any]:
        """Verified claims of the bearer token, on every request.

        No cache of its own: the validator remembers verified tokens for at most
        ``auth.verified_cache_ttl_s`` (never past ``exp``) and re-checks ``exp``/``nbf`` on every
        reuse, so a token is never trusted longer than the validator would trust it.
        """
        token = bearer_token(authorization)
        if token is None:
            raise Refusal(
                401,
                "no bearer token: send Authorization: Bearer <access token>",
                error="unauthenticated",
            )
        try:
            return await self.validator.validate(token)
        except InvalidToken as exc:
            raise Refusal(401, f"token refused: {exc.reason}", error="invalid_token") from None
        except ValidationUnavailable as exc:
            raise Refusal(
                503, f"cannot verify the token now: {exc}", error="validation_unavailable"
            ) from None

    # -- decisions -----------------------------------------------------------------------------
    async def _ask_engine(self, entrypoint: str, call: Awaitable[_T]) -> _T:
        """One engine call, timed under ``entrypoint``; engine failures become refusals."""
        started = time.perf_counter()
        try:
            return await call
        except EngineUnavailable as exc:
            raise Refusal(
                503, f"policy engine unavailable, denying: {exc}", error="engine_unavailable"
            ) from None
        except PolicyError as exc:
            raise Refusal(500, f"policy error, denying: {exc}", error="policy_error") from None
        finally:
            self.metrics.engine_seconds.labels(entrypoint).observe(time.perf_counter() - started)

    async def authorize_call(
        self,
        *,
        method: str,
        server: str,
        tool: str,
        annotations: policy_input.Annotations,
        claims: Mapping[str, Any],
        arguments: Mapping[str, Any] | None,
        prompt: str = "",
    ) -> tuple[bool, str]:
        # The catalogue (the servers' own tools/list) wins over what the request says about the
        # tool: a hint is only used for a tool the catalogue does not know.
        known = policy_input.catalogue_annotations(self.catalogue, server, tool)
        if known is not None:
            annotations = known
        doc = policy_input.call_input(
            method=method,
            server=server,
            tool=tool,
            annotations=annotations,
            claims=claims,
            arguments=arguments,
            prompt=prompt,
        )
        decision = await self._ask_engine("decision", self.engine.evaluate(doc))
        return decision.allow, decision.reason

    async def allowed_tools(
        self, claims: Mapping[str, Any], catalogue: Catalogue | None
    ) -> dict[str, list[str]]:
        doc = policy_input.list_input(claims, catalogue)
        return await self._ask_engine("allowed_tools", self.engine.allowed_tools(doc))

    async def allowed_prompts(self, claims: Mapping[str, Any]) -> dict[str, list[str]]:
        doc = policy_input.list_input(claims, None)
        return await self._ask_engine("allowed_prompts", self.engine.allowed_prompts(doc))

    async def listed_tools(
        self,
        claims: Mapping[str, Any],
        token: str | None,
        catalogue: Catalogue | None = None,
    ) -> tuple[dict[str, list[str]], bool]:
        """The tools tools/list shows: the roles' tools, narrowed by the cluster's RBAC for the
        user's own token when ``rbac_list`` is on; True when some server fell back to its
        role-derived list (a failed review: fail soft, see :mod:`.rbac_list`)."""
        allowed = await self.allowed_tools(claims, catalogue)
        if self.rbac is None:
            return allowed, False
        filtered = await self.rbac.filter(allowed, token, user_key(claims))
        return filtered.allowed, filtered.degraded

    async def wristband(self, claims: Mapping[str, Any], token: str | None = None) -> SignedList:
        """The signed list for these claims, reused while fresh (same claims ⇒ same list)."""
        assert self.signer is not None
        ttl = min(self.settings.wristband.cache_ttl_s, self.signer.lifetime_s / 2)
        if self.rbac is not None:
            ttl = min(ttl, self.rbac.ttl_s)
        key = hashlib.sha256(compact_json(policy_input.policy_claims(claims)).encode()).hexdigest()
        now = time.time()
        cached = self._wristbands.get(key)
        if cached is not None and now - cached[0] < ttl:
            self._wristbands.move_to_end(key)
            return cached[1]
        # The engine uses data.mcp.catalogue (loaded at start), not a per-request copy.
        generation = self._policy_generation
        allowed, degraded = await self.listed_tools(claims, token)
        prompts = await self.allowed_prompts(claims)
        signed = self.signer.sign(allowed, prompts=prompts, subject=subject_of(claims))
        # not from a replaced policy, nor a role-only list standing in for a failed review
        if ttl > 0 and generation == self._policy_generation and not degraded:
            self._wristbands[key] = (now, signed)
            while len(self._wristbands) > _WRISTBAND_CACHE_SIZE:
                self._wristbands.popitem(last=False)
        return signed

    def record(
        self,
        *,
        claims: Mapping[str, Any] | None,
        method: str,
        server: str | None,
        tool: str | None,
        allow: bool,
        reason: str,
        status: int,
        started: float,
        endpoint: str,
        prompt: str | None = None,
    ) -> None:
        decision = "allow" if allow else "deny"
        self.metrics.decisions.labels(endpoint, decision).inc()
        trace_id = trace_id_var.get()
        extra = {
            "endpoint": endpoint,
            **({"prompt": prompt} if prompt else {}),
            **({"trace_id": trace_id} if trace_id else {}),
        }
        kt.annotate(
            {
                kt.USER: kt.subject_name(claims),
                kt.MCP_METHOD: method,
                kt.MCP_SERVER: server,
                kt.TOOL_NAME: tool,
                kt.DECISION: decision,
                kt.OUTCOME: str(status),
            }
        )
        self.decisions.record(
            user=policy_input.display_name(claims or {}),
            subject=subject_of(claims or {}),
            method=method,
            server=server,
            tool=tool,
            allow=allow,
            reason=reason,
            engine=self.engine.name,
            status=status,
            duration_ms=(time.perf_counter() - started) * 1000,
            extra=extra,
        )


def subject_of(claims: Mapping[str, Any]) -> str | None:
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


@dataclass
class ServiceSlot:
    """Holds the service, created once the event loop runs (it owns an HTTP session)."""

    service: PolicyService | None = None
    reloader: PolicyReloader | None = None


SLOT = web.AppKey("policy_service", ServiceSlot)


def service_of(app: web.Application) -> PolicyService:
    service = app[SLOT].service
    if service is None:
        raise web.HTTPServiceUnavailable(reason="policy service is starting")
    return service


def reloader_of(app: web.Application) -> PolicyReloader | None:
    """The app's policy reloader (None when it does not reload, or before it starts)."""
    return app[SLOT].reloader
