"""Policy changes at run time: watch the policy files or poll a bundle service, then reload.

Sources (``reload`` and ``bundle`` settings):

* **files** (``reload.watch_files``): every ``reload.interval_s`` the Rego modules, data files
  and catalogue are read again and compared with the policy in force. A mounted ConfigMap is read
  through its ``..data`` link, which kubelet swaps atomically: each check reads one complete
  version of the volume, never a mix. Files changed during a read are read again at the next
  check. Other writers should replace files atomically too (write, then rename).
* **bundle** (``bundle.url``): an OPA bundle service polled with ``If-None-Match``
  (:mod:`.bundles`).

A new policy is built and checked completely (compiled, a probe decision and tool list answered)
before it replaces the old one (:mod:`.live_engine`); then the service's own caches (signed tool
lists) are dropped. A policy that does not load, compile or answer is refused: the last good one
stays in force, ``policy_reload_failing`` is 1, ``policy_reloads_total{result="refused"}``
counts it and one ERROR line names the problem (a file read half-written is only reported when
the next check reads the same problem again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy.bundles import BundleFetchError, BundlePoller, read_bundle
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.engines import Decision, DecisionEngine, EngineUnavailable, PolicyError
from gateway_plugins.policy.input import Catalogue, InputError
from gateway_plugins.policy.live_engine import LiveEngine
from gateway_plugins.policy.opa_engine import OpaServerEngine
from gateway_plugins.policy.policy_files import file_stamp, load_file_source
from gateway_plugins.policy.policy_source import (
    PolicySource,
    PolicySourceError,
)

log = logging.getLogger(__name__)

Outcome = Literal["ok", "refused", "unavailable"]
Origin = Literal["files", "bundle"]


def revision_of(source: PolicySource) -> str:
    """A short digest naming a policy version (logs, metrics)."""
    doc = json.dumps(
        [source.modules, source.config, source.catalogue], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------
@dataclass
class ReloadMetrics:
    reloads: Counter
    failing: Gauge
    last_success: Gauge
    revision: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> ReloadMetrics:
        return cls(
            Counter(
                "policy_reloads_total",
                "Policy reloads by source (files, bundle) and result (ok; refused: the new "
                "policy does not load or answer, the last good one stays; unavailable: OPA "
                "could not take it, retried).",
                ["source", "result"],
                registry=registry,
            ),
            Gauge(
                "policy_reload_failing",
                "1 while the newest policy seen was refused and an older one is in force.",
                registry=registry,
            ),
            Gauge(
                "policy_last_reload_timestamp_seconds",
                "When the policy in force was loaded (Unix time).",
                registry=registry,
            ),
            Gauge(
                "policy_revision_info",
                "The policy in force (value 1, label revision: digest of modules and data, or "
                "the bundle's revision).",
                ["revision"],
                registry=registry,
            ),
        )


# ------------------------------------------------------------------------------------------
# an engine that has no policy yet (bundle mode before the first bundle)
# ------------------------------------------------------------------------------------------
class AwaitingPolicy:
    """Refuses every decision (503, fail closed) until the first bundle is loaded."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self._why = f"no policy loaded yet: waiting for the first bundle from {url}"

    async def start(self) -> None:
        return None

    async def evaluate(self, doc: Mapping[str, Any]) -> Decision:
        raise EngineUnavailable(self._why)

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        raise EngineUnavailable(self._why)

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        raise EngineUnavailable(self._why)

    async def check_ready(self) -> None:
        raise EngineUnavailable(self._why)

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------
# the reloader
# ------------------------------------------------------------------------------------------
class PolicyReloader:
    """Checks the source, builds and swaps in new policies; ``run()`` is its background loop."""

    def __init__(
        self,
        settings: PolicySettings,
        live: LiveEngine,
        *,
        build: Callable[[PolicySource], DecisionEngine],
        read_catalogue: Callable[[Path | None], Catalogue | None],
        on_change: Callable[[PolicySource], None],
        metrics: ReloadMetrics,
        active: PolicySource | None,
        poller: BundlePoller | None = None,
    ) -> None:
        self._settings = settings
        self._live = live
        self._build = build
        self._read_catalogue = read_catalogue
        self._on_change = on_change
        self._metrics = metrics
        self._poller = poller
        self.active = active
        self._refused: PolicySource | None = None
        self._pending_error: str | None = None
        self._reported_error: str | None = None
        self.reloads = 0
        if active is not None:
            self._set_revision(revision_of(active))

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._delay())
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a check throws
                log.exception("policy reload check failed unexpectedly")

    def _delay(self) -> float:
        if self._poller is not None:
            return self._poller.delay()
        return self._settings.reload.interval_s

    async def check(self) -> Outcome | None:
        """One look at the source; the outcome of a reload, None when nothing changed."""
        if self._poller is not None:
            return await self._check_bundle(self._poller)
        return await self._check_files()

    # -- files ----------------------------------------------------------------------------
    async def _check_files(self) -> Outcome | None:
        before = await asyncio.to_thread(file_stamp, self._settings)
        try:
            source = await asyncio.to_thread(load_file_source, self._settings, self._read_catalogue)
        except PolicySourceError as exc:
            if before != await asyncio.to_thread(file_stamp, self._settings):
                return None  # changed while read: read again next time
            return self._refuse("files", str(exc), debounce=True)
        if before != await asyncio.to_thread(file_stamp, self._settings):
            return None
        self._pending_error = None
        if source == self.active or source == self._refused:
            return None
        return await self.apply(source, "files", revision_of(source))

    # -- bundle ---------------------------------------------------------------------------
    async def _check_bundle(self, poller: BundlePoller) -> Outcome | None:
        try:
            fetched = await poller.fetch()
        except BundleFetchError as exc:
            self._log_once(f"policy bundle from {poller.url} not fetched: {exc}", logging.WARNING)
            return None
        if fetched.payload is None:
            return None  # 304: unchanged
        try:
            bundle = read_bundle(fetched.payload, max_bytes=self._settings.bundle.max_bytes)
        except PolicySourceError as exc:
            poller.etag = fetched.etag  # not downloaded again until the server has a new one
            return self._refuse("bundle", str(exc))
        source = bundle.source
        if source.catalogue is None and self._settings.catalogue_file is not None:
            try:
                source = source.with_catalogue(self._read_catalogue(self._settings.catalogue_file))
            except InputError as exc:
                return self._refuse("bundle", str(exc))
        if source == self.active:
            poller.etag = fetched.etag
            return None
        revision = bundle.revision or revision_of(source)
        outcome = await self.apply(source, "bundle", revision)
        if outcome != "unavailable":
            poller.etag = fetched.etag
        return outcome

    # -- building and swapping --------------------------------------------------------------
    async def apply(self, source: PolicySource, origin: Origin, revision: str) -> Outcome | None:
        current = self._live.current
        try:
            if self._settings.engine == "opa" and isinstance(current, OpaServerEngine):
                opa = current
                await self._live.reload_in_place(lambda: self._push(opa, source))
            else:
                engine = await self._build_checked(source)
                self._live.swap(engine)
        except (PolicySourceError, PolicyError) as exc:
            self._refused = source
            return self._refuse(origin, str(exc))
        except EngineUnavailable as exc:
            if "refused" in str(exc):  # OPA refused the modules (they do not compile)
                self._refused = source
                return self._refuse(origin, str(exc))
            self._metrics.reloads.labels(origin, "unavailable").inc()
            self._log_once(f"policy from {origin} not loaded yet, retrying: {exc}", logging.WARNING)
            return "unavailable"
        self.active = source
        self._refused = None
        self._pending_error = self._reported_error = None
        self.reloads += 1
        self._on_change(source)
        self._metrics.reloads.labels(origin, "ok").inc()
        self._metrics.failing.set(0)
        self._metrics.last_success.set(time.time())
        self._set_revision(revision)
        log.info(
            "policy reloaded from %s: revision %s, %d module(s), settings %s",
            origin,
            revision,
            len(source.modules),
            sorted(source.config),
        )
        return "ok"

    async def _build_checked(self, source: PolicySource) -> DecisionEngine:
        """A started engine for ``source`` that has answered a probe decision and tool list."""
        engine = await asyncio.to_thread(self._build, source)
        try:
            await engine.start()
            if isinstance(engine, OpaServerEngine) and engine.loads == 0:
                raise EngineUnavailable(f"OPA at {engine.url} did not take the policy")
            await _probe(engine)
        except BaseException:
            await engine.close()
            raise
        return engine

    async def _push(self, engine: OpaServerEngine, source: PolicySource) -> None:
        previous = self.active
        await engine.reload(source)
        try:
            await _probe(engine)
        except (PolicyError, EngineUnavailable):
            if previous is not None:
                await engine.reload(previous)
            raise

    # -- reporting ------------------------------------------------------------------------------
    def _refuse(self, origin: Origin, reason: str, *, debounce: bool = False) -> Outcome | None:
        if debounce and self._pending_error != reason:
            self._pending_error = reason  # maybe a half-written file: look again first
            return None
        if reason == self._reported_error:
            return None
        self._reported_error = reason
        self._metrics.reloads.labels(origin, "refused").inc()
        self._metrics.failing.set(1)
        log.error("policy from %s refused, the last good policy stays in force: %s", origin, reason)
        return "refused"

    def _log_once(self, message: str, level: int) -> None:
        if message != self._reported_error:
            self._reported_error = message
            log.log(level, message)

    def _set_revision(self, revision: str) -> None:
        self._metrics.revision.clear()
        self._metrics.revision.labels(revision).set(1)


async def _probe(engine: DecisionEngine) -> None:
    """The policy answers a decision and a tool list (it may compile and still be unusable)."""
    await engine.check_ready()
    await engine.evaluate(
        policy_input.call_input(
            method="tools/call",
            server="probe",
            tool="probe",
            annotations={},
            claims={},
            arguments=None,
        )
    )
    await engine.allowed_tools(policy_input.list_input({}, None))


# ------------------------------------------------------------------------------------------
# wiring (called from the app's lifecycle)
# ------------------------------------------------------------------------------------------
def reloading_enabled(settings: PolicySettings) -> bool:
    """Whether this service loads the policy itself and should keep it current."""
    if settings.engine == "opa" and not settings.opa.load_policies:
        return False  # OPA loads the policy itself (its own bundle plugin or files)
    return settings.bundle.url is not None or settings.reload.watch_files


def make_poller(settings: PolicySettings, session: aiohttp.ClientSession) -> BundlePoller | None:
    bundle = settings.bundle
    if bundle.url is None:
        return None
    token = None
    if bundle.token_file is not None:
        token = bundle.token_file.read_text(encoding="utf-8").strip()
    return BundlePoller(
        bundle.url,
        session,
        min_delay_s=bundle.min_delay_s,
        max_delay_s=bundle.max_delay_s,
        max_bytes=bundle.max_bytes,
        token=token,
    )
