"""The exchange logic as a library: validate the caller's token locally, skip when it already
carries the target audience, else run the target's hops at the STS, cached and coalesced.

``Exchanger.token_for(subject_token, target)`` is the entry point for other code (e.g. a combined
exchange-then-policy check endpoint); the HTTP routes (the check pipeline of :mod:`.pipeline`, the
``/token`` facade of :mod:`.facade`) use :meth:`Exchanger.exchange`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt

from gateway_plugins.common.jwt_validation import InvalidToken, JWTValidator, looks_like_jwt
from gateway_plugins.token_exchange.cache_config import CacheConfig
from gateway_plugins.token_exchange.metrics import ExchangeMetrics
from gateway_plugins.token_exchange.sts_client import STSClient, STSRefused
from gateway_plugins.token_exchange.sts_config import Grant
from gateway_plugins.token_exchange.targets import Target, TargetRegistry
from gateway_plugins.token_exchange.token_cache import TokenCache

Outcome = Literal["hit", "miss", "coalesced", "unchanged"]


class ExchangeRefused(Exception):
    """The exchange is not allowed (STS refusal or wrong audience issued): answer 403."""

    def __init__(self, reason: str, error: str = "invalid_target") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class Exchanged:
    token: str
    expires_at: float  # epoch seconds
    scope: str | None = None


@dataclass(frozen=True)
class ExchangeResult:
    token: str
    expires_at: float
    outcome: Outcome
    scope: str | None = None

    @property
    def expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))


class SharedCache(Protocol):
    """A cache shared by replicas behind the memory cache (:mod:`.redis_cache`)."""

    async def get_or_fetch(
        self, parts: Sequence[str], fetch: Callable[[], Awaitable[tuple[Exchanged, float]]]
    ) -> tuple[Exchanged, float]: ...


def subject_key(token: str) -> str:
    """Cache key part for a subject token: its SHA-256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def audiences_of(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


class Exchanger:
    """Turns a caller's token into a token for a configured target."""

    def __init__(
        self,
        *,
        validator: JWTValidator,
        targets: TargetRegistry,
        sts: Mapping[str, STSClient],
        cache: CacheConfig,
        opaque_tokens: Literal["reject", "passthrough"] = "reject",
        metrics: ExchangeMetrics | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self.validator = validator
        self._shared = shared
        self.targets = targets
        self._sts = dict(sts)
        self._cache_cfg = cache
        self._opaque = opaque_tokens
        self._metrics = metrics
        self.cache: TokenCache[Exchanged] = TokenCache(
            cache.max_entries, negative=(ExchangeRefused,), negative_ttl_s=cache.negative_ttl_s
        )

    async def token_for(self, subject_token: str, target: str) -> str:
        """The token to send to ``target`` on behalf of the subject token's user."""
        return (await self.exchange(subject_token, target)).token

    async def validate(self, subject_token: str) -> dict[str, Any] | None:
        """Claims of a valid JWT; None for an opaque token when opaque tokens pass through."""
        if self._opaque == "passthrough" and subject_token and not looks_like_jwt(subject_token):
            return None
        return await self.validator.validate(subject_token)

    async def exchange(
        self,
        subject_token: str,
        audience: str,
        scopes: Sequence[str] | None = None,
        *,
        claims: dict[str, Any] | None = None,
    ) -> ExchangeResult:
        """Raises InvalidToken, ValidationUnavailable, UnknownTarget, ScopeNotAllowed,
        ExchangeRefused or STSUnavailable; every message is free of token data."""
        if claims is None:
            claims = await self.validate(subject_token)
        target = self.targets.resolve(audience)
        steps, scope = target.plan(scopes)
        if claims is None:  # opaque token, passthrough mode
            if target.needs_exchange or target.subject_audiences:
                raise InvalidToken(
                    f"an opaque (non-JWT) token cannot be exchanged for '{target.audience}'"
                )
            return self._count(target, ExchangeResult(subject_token, time.time() + 60, "unchanged"))
        if not target.accepts_subject(audiences_of(claims)):
            raise InvalidToken(
                f"the token is not addressed to a caller that may obtain '{target.audience}' "
                f"(its 'aud' must contain one of {sorted(target.subject_audiences)})"
            )
        if not steps or target.already_satisfied_by(audiences_of(claims)):
            expires_at = float(claims.get("exp", time.time()))
            return self._count(target, ExchangeResult(subject_token, expires_at, "unchanged"))
        key = (subject_key(subject_token), target.audience, scope)
        subject_exp = float(claims["exp"])

        async def exchange_here() -> tuple[Exchanged, float]:
            return await self._run_steps(subject_token, target, steps, subject_exp)

        async def fetch() -> tuple[Exchanged, float]:
            if self._shared is None:
                return await exchange_here()
            # The target's hops are part of the shared entry's name: replicas running another
            # configuration of the same audience never share tokens.
            parts = (subject_token, target.audience, scope, f"{target.final_audience}{steps!r}")
            return await self._shared.get_or_fetch(parts, exchange_here)

        exchanged, source = await self.cache.get_or_fetch(key, fetch)
        if self._metrics is not None:
            self._metrics.cache_entries.set(len(self.cache))
        return self._count(
            target, ExchangeResult(exchanged.token, exchanged.expires_at, source, exchanged.scope)
        )

    def _count(self, target: Target, result: ExchangeResult) -> ExchangeResult:
        if self._metrics is not None:
            self._metrics.count(target.audience, result.outcome)
        return result

    async def _run_steps(
        self, subject_token: str, target: Target, steps: Sequence[Any], subject_exp: float
    ) -> tuple[Exchanged, float]:
        current = subject_token
        issued_scope: str | None = None
        expires_in: float | None = None
        for step in steps:
            client = self._sts[step.sts]
            try:
                if step.grant is Grant.TOKEN_EXCHANGE:
                    issued = await client.token_exchange(current, step.audience, step.scope)
                else:
                    issued = await client.jwt_bearer(current, step.scope)
            except STSRefused as exc:
                raise ExchangeRefused(str(exc), _facade_error(exc.error)) from None
            current, issued_scope, expires_in = issued.access_token, issued.scope, issued.expires_in
        issued_claims = _peek(current)
        if target.final_audience not in audiences_of(issued_claims):
            raise ExchangeRefused(
                f"the token service issued a token without audience '{target.final_audience}'; "
                "check the target's audience mapper or 'expect_audience'"
            )
        now = time.time()
        exp = issued_claims.get("exp")
        token_exp = float(exp) if isinstance(exp, int | float) else now + (expires_in or 0)
        ttl = min(token_exp, subject_exp) - self._cache_cfg.expiry_margin_s - now
        if ttl < self._cache_cfg.min_ttl_s:
            ttl = 0.0  # too short-lived to be worth caching
        return Exchanged(current, token_exp, issued_scope), ttl


def _peek(token: str) -> dict[str, Any]:
    """Claims of a token the STS just issued to us over TLS (not re-verified)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}  # opaque issued token: the audience check below refuses it
    return claims


def _facade_error(error: str) -> str:
    """RFC 8693 error for an STS refusal: the target (audience) was refused, unless scope was."""
    return "invalid_scope" if error == "invalid_scope" else "invalid_target"
