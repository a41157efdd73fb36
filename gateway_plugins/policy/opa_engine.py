"""The OPA server decision engine (``opa-python-client``).

At start (and whenever OPA answers that the policy is missing, e.g. after a restart) it loads the
modules and data, so the service recovers by itself. Unreachable OPA raises
:class:`.engines.EngineUnavailable`: callers deny with 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway_plugins.policy.engines import (
    ALLOWED_PROMPTS,
    ALLOWED_TOOLS,
    CATALOGUE_PATH,
    CONFIG_PATH,
    DECISION,
    PACKAGE,
    POLICY_ID_PREFIX,
    PROBE_INPUT,
    Decision,
    EngineUnavailable,
    allowed_from,
    decision_from,
    first_line,
)
from gateway_plugins.policy.policy_source import PolicySource

# the logger these messages always came from (before the engines had a module each)
log = logging.getLogger("gateway_plugins.policy.engines")


@dataclass(frozen=True)
class OpaOptions:
    url: str = "http://127.0.0.1:8181"
    timeout_s: float = 1.0
    load_policies: bool = True
    token: str | None = None
    ca_file: Path | None = None


class OpaServerEngine:
    """Decisions from an OPA server; policies and data pushed at start and after OPA restarts."""

    name = "opa"

    def __init__(self, source: PolicySource, options: OpaOptions) -> None:
        from opa_client.opa_async import AsyncOpaClient

        parts = urlsplit(options.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OPA url {options.url!r} must be http(s)://host:port")
        self._source = source
        self._options = options
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            token=options.token,
            retries=0,  # fail fast: the caller denies, the next request tries again
            timeout=options.timeout_s,
        )
        self._load_lock = asyncio.Lock()
        self._loads = 0

    @property
    def url(self) -> str:
        return self._options.url

    @property
    def loads(self) -> int:
        """How many times policies and data were pushed (1 + recoveries after OPA restarts)."""
        return self._loads

    async def start(self) -> None:
        await self._client._init_session()
        if self._options.ca_file is not None and self._client._session is not None:
            await self._replace_session_with_ca(self._options.ca_file)
        try:
            await self._ensure_loaded(force=True)
        except EngineUnavailable as exc:
            log.warning("OPA not reachable at start; will retry on each request: %s", exc)

    async def reload(self, source: PolicySource) -> None:
        """Push ``source`` in place of the current policy (a run-time reload). When OPA refuses
        it or cannot be reached, the previous policy is pushed back and the error raised."""
        previous = self._source
        self._source = source
        try:
            await self._ensure_loaded(force=True)
        except EngineUnavailable:
            self._source = previous
            try:
                await self._ensure_loaded(force=True)
            except EngineUnavailable as exc:
                log.warning("could not push the previous policy back into OPA: %s", exc)
            raise

    async def _replace_session_with_ca(self, ca_file: Path) -> None:
        from gateway_plugins.common.http_client import make_ssl_context

        assert self._client._session is not None
        await self._client._session.close()
        self._client._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=make_ssl_context(ca_file)),
            timeout=aiohttp.ClientTimeout(total=self._options.timeout_s),
            headers=self._client.headers,
        )

    async def _ensure_loaded(self, *, force: bool) -> None:
        if not self._options.load_policies:
            return
        seen = self._loads
        async with self._load_lock:
            if self._loads != seen and not force:
                return  # another request reloaded while this one waited
            await self._call(self._push)
            self._loads += 1
            log.info("loaded the policy and its data into OPA at %s", self.url)

    async def _push(self) -> None:
        for name, text in self._source.modules.items():
            await self._client.update_policy_from_string(
                text, f"{POLICY_ID_PREFIX}/{name}", rego_compat=False
            )
        await self._client.update_or_create_data(self._source.config, CONFIG_PATH)
        if self._source.catalogue is not None:
            await self._client.update_or_create_data(self._source.catalogue, CATALOGUE_PATH)

    async def _call(self, func: Any, *args: Any) -> Any:
        try:
            return await func(*args)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise EngineUnavailable(
                f"OPA at {self.url} is unreachable ({type(exc).__name__})"
            ) from None
        except aiohttp.ClientResponseError as exc:
            raise EngineUnavailable(f"OPA at {self.url} answered HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"OPA at {self.url} failed ({type(exc).__name__})") from None
        except Exception as exc:  # opa_client's own errors (parse, policy upload)
            if type(exc).__module__.startswith("opa_client"):
                raise EngineUnavailable(
                    f"OPA at {self.url} refused the request: {first_line(exc)}"
                ) from None
            raise

    async def _query(self, rule: str, doc: Mapping[str, Any]) -> Any:
        answer = await self._call(self._client.query_rule, dict(doc), PACKAGE, rule)
        if "result" not in answer and self._options.load_policies:
            await self._ensure_loaded(force=False)  # OPA restarted without our policy
            answer = await self._call(self._client.query_rule, dict(doc), PACKAGE, rule)
        if "result" not in answer:
            raise EngineUnavailable(
                f"OPA at {self.url} has no data.{PACKAGE.replace('/', '.')}.{rule}: load the policy"
            )
        return answer["result"]

    async def evaluate(self, doc: Mapping[str, Any]) -> Decision:
        return decision_from(await self._query(DECISION, doc))

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        value = await self._query(ALLOWED_TOOLS, doc)
        return allowed_from(value, doc.get("catalogue") or self._source.catalogue)

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        value = await self._query(ALLOWED_PROMPTS, doc)
        return allowed_from(value, doc.get("catalogue") or self._source.catalogue, ALLOWED_PROMPTS)

    async def check_ready(self) -> None:
        await self.evaluate(PROBE_INPUT)

    async def close(self) -> None:
        await self._client.close_connection()
