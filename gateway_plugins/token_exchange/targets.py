"""Target resolution: which hops produce a token for a requested audience."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway_plugins.token_exchange.sts_config import Grant, StepConfig, TargetConfig


class UnknownTarget(Exception):
    """No target is configured for the requested audience."""

    def __init__(self, audience: str) -> None:
        super().__init__(f"no token exchange target is configured for audience '{audience}'")
        self.audience = audience


class ScopeNotAllowed(Exception):
    """The caller asked for scopes the target does not allow."""


@dataclass(frozen=True)
class Step:
    sts: str
    grant: Grant
    audience: tuple[str, ...]
    scope: str | None


@dataclass(frozen=True)
class Target:
    audience: str
    final_audience: str
    steps: tuple[Step, ...]
    allowed_scopes: frozenset[str]
    skip_when: str = "aud_exact"
    subject_audiences: frozenset[str] = frozenset()

    @property
    def needs_exchange(self) -> bool:
        return bool(self.steps)

    def accepts_subject(self, audiences: Sequence[str]) -> bool:
        """Whether a subject token with these audiences may get a token for this target."""
        return not self.subject_audiences or not self.subject_audiences.isdisjoint(audiences)

    def already_satisfied_by(self, audiences: Sequence[str]) -> bool:
        """Whether a token with these audiences can go to the target unchanged."""
        if self.skip_when == "aud_contains":
            return self.final_audience in audiences
        if self.skip_when == "aud_exact":
            return list(audiences) == [self.final_audience]
        return False

    def plan(self, scopes: Sequence[str] | None) -> tuple[tuple[Step, ...], str]:
        """The hops to run and the normalised scope string (part of the cache key)."""
        if not scopes:
            last = self.steps[-1].scope if self.steps else None
            return self.steps, " ".join(sorted((last or "").split()))
        wanted = frozenset(scopes)
        refused = sorted(wanted - self.allowed_scopes)
        if refused:
            allowed = sorted(self.allowed_scopes) or "none"
            raise ScopeNotAllowed(
                f"scope(s) {refused} not allowed for target '{self.audience}' (allowed: {allowed})"
            )
        scope = " ".join(sorted(wanted))
        if not self.steps:
            return self.steps, scope
        final = self.steps[-1]
        replaced = Step(final.sts, final.grant, final.audience, scope)
        return (*self.steps[:-1], replaced), scope


def _step(target: TargetConfig, step: StepConfig) -> Step:
    audience: tuple[str, ...] = ()
    if step.grant is Grant.TOKEN_EXCHANGE:
        audience = tuple(step.audience) or (target.audience,)
    return Step(step.sts, step.grant, audience, step.scope)


class TargetRegistry:
    """Configured targets by audience."""

    def __init__(self, targets: Iterable[TargetConfig]) -> None:
        self._targets = {
            t.audience: Target(
                audience=t.audience,
                final_audience=t.final_audience,
                steps=tuple(_step(t, s) for s in t.steps),
                allowed_scopes=frozenset(t.allowed_scopes),
                skip_when=t.skip_when,
                subject_audiences=frozenset(t.subject_audiences),
            )
            for t in targets
        }

    def resolve(self, audience: str) -> Target:
        target = self._targets.get(audience)
        if target is None:
            raise UnknownTarget(audience)
        return target

    def __contains__(self, audience: object) -> bool:
        return audience in self._targets

    @property
    def audiences(self) -> list[str]:
        return sorted(self._targets)
