"""The embedded decision engine: rego-cpp (PyPI ``regopy``) in the service's own process.

The policy is compiled once into a bundle at start. Decisions run inline (about 0.5 ms of CPU;
repeated inputs come from an exact LRU cache); tool lists run in one worker thread on their own
interpreter, so a long list does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway_plugins.policy.engines import (
    ALLOWED_PROMPTS,
    ALLOWED_TOOLS,
    ALLOWED_TOOLS_PARTS,
    DECISION,
    PACKAGE,
    PROBE_INPUT,
    Decision,
    PolicyError,
    allowed_from,
    decision_from,
    first_line,
)
from gateway_plugins.policy.input import Catalogue
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError


class _Compiled:
    """One interpreter with the policy compiled into a bundle; not thread-safe by itself."""

    def __init__(self, source: PolicySource) -> None:
        from regopy import Interpreter, RegoError

        self._error = RegoError
        self._interp = Interpreter()
        try:
            for name, text in source.modules.items():
                self._interp.add_module(name, text)
            self._interp.add_data(source.data())
            entrypoints = (DECISION, ALLOWED_TOOLS, ALLOWED_TOOLS_PARTS, ALLOWED_PROMPTS)
            self._bundle = self._interp.build(None, [f"{PACKAGE}/{e}" for e in entrypoints])
        except RegoError as exc:
            raise PolicySourceError(
                f"the embedded engine cannot compile the policy: {_rego_errors(exc, source)}"
            ) from None
        if not self._bundle.ok():
            raise PolicySourceError("the embedded engine could not build the policy bundle")
        self._lock = threading.Lock()

    def query(self, entrypoint: str, doc: Mapping[str, Any]) -> Any:
        with self._lock:
            try:
                self._interp.set_input(dict(doc))
                output = self._interp.query_bundle_entrypoint(
                    self._bundle, f"{PACKAGE}/{entrypoint}"
                )
            except self._error as exc:
                raise PolicyError(f"policy evaluation failed: {first_line(exc)}") from None
            except ValueError:  # regopy could not parse the engine's output
                raise PolicyError("policy evaluation returned unreadable output") from None
        results = output.results
        if not results or not results[0].expressions:
            raise PolicyError(
                f"data.{PACKAGE.replace('/', '.')}.{entrypoint} is undefined for this input"
            )
        return results[0].expressions[0]


_REGO_ERROR = re.compile(r"\(error \d+:([^|\s]+)\|(\d+)\|\d+\s+\(errormsg \d+:([^)]*)\)")


def _rego_errors(exc: Exception, source: PolicySource) -> str:
    """rego-cpp's error S-expression as ``file:line: message; ...`` (first line otherwise)."""
    found = []
    for name, offset, message in _REGO_ERROR.findall(str(exc))[:3]:
        text = source.modules.get(name)
        line = text.count("\n", 0, int(offset)) + 1 if text is not None else "?"
        found.append(f"{name}:{line}: {message.strip()}")
    return "; ".join(found) if found else first_line(exc)


@dataclass(frozen=True)
class _ServerTools:
    names: frozenset[str]
    read_only: frozenset[str]


def _index(catalogue: Catalogue) -> dict[str, _ServerTools]:
    return {
        server: _ServerTools(
            frozenset(t["name"] for t in tools),
            frozenset(t["name"] for t in tools if t.get("annotations", {}).get("readOnly") is True),
        )
        for server, tools in catalogue.items()
    }


def allowed_from_parts(parts: Any, index: Mapping[str, _ServerTools]) -> dict[str, list[str]]:
    """The set algebra ``allowed_tools_parts`` describes (see the policy's METADATA)."""
    if not isinstance(parts, dict):
        raise PolicyError("the policy's allowed_tools_parts is not an object")
    out: dict[str, list[str]] = {}
    for server, tools in index.items():
        part = parts.get(server)
        if not isinstance(part, dict) or part.get("deny_all") is not False:
            out[server] = []  # denied, or an answer of the wrong shape: list nothing
            continue
        prefixes = [p for p in part.get("role_prefixes", []) if isinstance(p, str)]
        roles = {
            role[len(prefix) :]
            for role in part.get("roles", [])
            if isinstance(role, str)
            for prefix in prefixes
            if role.startswith(prefix)
        }
        granted = (roles | set(part.get("named", []))) & tools.names
        if part.get("read_only") is True:
            granted |= tools.read_only
        if part.get("all") is True:
            granted = set(tools.names)
        out[server] = sorted(granted - set(part.get("denied", [])))
    return out


class EmbeddedEngine:
    """In-process Rego (rego-cpp); the policy is compiled once.

    Tool lists over a catalogue use the policy's ``allowed_tools_parts`` entrypoint plus native
    set algebra (:func:`allowed_from_parts`): the same result as ``allowed_tools`` (checked by the
    differential test against OPA), without rego-cpp building sets of hundreds of names.
    """

    name = "embedded"

    def __init__(
        self, source: PolicySource, *, cache_size: int = 4096, worker: bool = True
    ) -> None:
        """``worker`` False: one compiled policy for decisions and lists (it has its own lock),
        e.g. for checking the policy at start, where compiling twice is wasted time."""
        self._source = source
        self._cache: OrderedDict[str, Decision] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self._inline = _Compiled(source)
        self._worker = _Compiled(source) if worker else self._inline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rego-list")
        self._index = _index(source.catalogue) if source.catalogue is not None else None

    async def start(self) -> None:
        self._inline.query(DECISION, PROBE_INPUT)

    async def evaluate(self, doc: Mapping[str, Any]) -> Decision:
        return self.evaluate_sync(doc)

    def evaluate_sync(self, doc: Mapping[str, Any]) -> Decision:
        """One decision. The policy and its data never change during the engine's life, so a
        decision is a pure function of the input: repeated inputs are answered from an LRU cache
        (``cache_size`` 0 turns it off)."""
        if self._cache_size <= 0:
            return decision_from(self._inline.query(DECISION, doc))
        key = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        decision = decision_from(self._inline.query(DECISION, doc))
        self._cache[key] = decision
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return decision

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.allowed_tools_sync, doc)

    def allowed_tools_sync(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        given = doc.get("catalogue")
        index = _index(given) if isinstance(given, dict) else self._index
        if index is None:  # no catalogue: the user's roles name the tools (small lists)
            return allowed_from(self._worker.query(ALLOWED_TOOLS, doc), None)
        return allowed_from_parts(self._worker.query(ALLOWED_TOOLS_PARTS, doc), index)

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.allowed_prompts_sync, doc)

    def allowed_prompts_sync(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        """Prompts per server: few names per user, evaluated by the policy itself."""
        given = doc.get("catalogue")
        catalogue = given if isinstance(given, dict) else self._source.catalogue
        value = self._worker.query(ALLOWED_PROMPTS, doc)
        return allowed_from(value, catalogue, ALLOWED_PROMPTS)

    async def check_ready(self) -> None:
        return None

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the tool-list worker thread (the synchronous form of :meth:`close`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
