"""Decision engines behind one interface: the embedded Rego engine and an OPA server.

Both evaluate the same modules and data (:class:`PolicySource`) and give the same answers for
``data.mcp.authz.decision``, the prompt lists of ``data.mcp.authz.allowed_prompts`` and the tool
lists of ``data.mcp.authz.allowed_tools`` (the embedded
engine computes those from the policy's ``allowed_tools_parts``; the differential test proves
the two agree):

* :class:`EmbeddedEngine` (default, no extra process): rego-cpp through PyPI ``regopy``; the
  policy is compiled once into a bundle at start. Decisions run inline (about 0.5 ms of CPU;
  repeated inputs come from an exact LRU cache);
  tool lists run in one worker thread on their own interpreter, so a long list does not stall the
  event loop.
* :class:`OpaServerEngine`: an OPA server through ``opa-python-client``. At start (and whenever
  OPA answers that the policy is missing, e.g. after a restart) it loads the modules and data, so
  the service recovers by itself. Unreachable OPA raises :class:`EngineUnavailable`: callers deny
  with 503 (fail closed).

This is the only module that talks to OPA or imports a Rego engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from gateway_plugins.policy.input import Catalogue, normalize_allowed

log = logging.getLogger(__name__)

PACKAGE = "mcp/authz"
DECISION = "decision"
ALLOWED_TOOLS = "allowed_tools"
ALLOWED_TOOLS_PARTS = "allowed_tools_parts"
ALLOWED_PROMPTS = "allowed_prompts"
CONFIG_PATH = "mcp/config"
CATALOGUE_PATH = "mcp/catalogue"
POLICY_ID_PREFIX = "kube-mcp-gateway"


class EngineUnavailable(Exception):
    """The engine cannot decide now (OPA unreachable, policy missing); safe to show."""


class PolicyError(Exception):
    """The policy gave no usable answer (undefined, wrong shape); safe to show."""


class PolicySourceError(Exception):
    """The policy files or data files cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"allow": self.allow, "reason": self.reason}


@dataclass(frozen=True)
class PolicySource:
    """Rego modules (name → text), ``data.mcp.config`` and the optional ``data.mcp.catalogue``."""

    modules: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)
    catalogue: Catalogue | None = None

    def data(self) -> dict[str, Any]:
        mcp: dict[str, Any] = {"config": self.config}
        if self.catalogue is not None:
            mcp["catalogue"] = self.catalogue
        return {"mcp": mcp}

    def with_catalogue(self, catalogue: Catalogue | None) -> PolicySource:
        return PolicySource(dict(self.modules), dict(self.config), catalogue)


def load_policy_source(
    policies_dir: Path, data_dirs: list[Path] | None = None, catalogue: Catalogue | None = None
) -> PolicySource:
    """Every ``*.rego`` under ``policies_dir`` except tests and every data file's settings.

    Data files (``*.json`` directly in each data dir, default ``<policies_dir>/data``) are JSON
    objects whose keys are settings of ``data.mcp.config``; a key set by two files is an error.
    """
    if not policies_dir.is_dir():
        raise PolicySourceError(f"policy directory {policies_dir} does not exist")
    modules: dict[str, str] = {}
    for path in sorted(policies_dir.rglob("*.rego")):
        if path.name.endswith("_test.rego") or _in_volume_internals(path, policies_dir):
            continue
        try:
            modules[path.relative_to(policies_dir).as_posix()] = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicySourceError(f"cannot read policy {path}: {exc.strerror or exc}") from None
    if not modules:
        raise PolicySourceError(f"no Rego modules (*.rego) in {policies_dir}")
    config: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for data_dir in data_dirs if data_dirs is not None else [policies_dir / "data"]:
        if not data_dir.is_dir():
            raise PolicySourceError(f"data directory {data_dir} does not exist")
        for path in sorted(data_dir.glob("*.json")):
            for key, value in _read_json_object(path).items():
                if key in config:
                    raise PolicySourceError(
                        f"setting {key!r} is set by both {origin[key]} and {path}; keep one"
                    )
                config[key] = value
                origin[key] = path
    _check_strings(config, "data.mcp.config")
    return PolicySource(modules, config, catalogue)


CONFIGMAP_DATA = "..data"  # a mounted ConfigMap's link to its current version


def snapshot_dir(path: Path) -> Path:
    """The folder to read: a mounted ConfigMap's current version (``..data`` resolved, a folder
    kubelet never changes, only replaces) or the folder itself."""
    data = path / CONFIGMAP_DATA
    return data.resolve() if data.is_dir() else path


def _in_volume_internals(path: Path, root: Path) -> bool:
    """A file under a mounted ConfigMap's ``..data`` / ``..<timestamp>`` folders: the same files
    again (the visible names are links into them), not extra modules."""
    return any(part.startswith("..") for part in path.relative_to(root).parts[:-1])


_UNSAFE = re.compile(r'[\x00-\x1f"\\]')


def _check_strings(value: Any, where: str) -> None:
    """Quotes, backslashes and control characters are refused in settings: reasons quote them,
    and the embedded engine does not escape them in its output."""
    if isinstance(value, str):
        if _UNSAFE.search(value):
            raise PolicySourceError(
                f"{where}: {value[:40]!r} contains a quote, backslash or control character; "
                "remove it"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{where}[{index}]")


def write_opa_bundle(source: PolicySource, out: Path, *, revision: str = "") -> Path:
    """An OPA bundle (tar.gz) holding the modules and ``data.mcp.config`` (and catalogue).

    For OPA servers that load the policy themselves (``opa run --server --bundle FILE`` or a
    bundle service) with the policy service's ``opa.load_policies: false``.
    """
    import io
    import tarfile

    files: dict[str, bytes] = {
        ".manifest": json.dumps({"revision": revision, "roots": ["mcp"]}).encode(),
        "mcp/config/data.json": json.dumps(source.config, indent=1).encode(),
    }
    for name, text in source.modules.items():
        files[f"policies/{name}"] = text.encode()
    if source.catalogue is not None:
        files["mcp/catalogue/data.json"] = json.dumps(source.catalogue).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for name, payload in sorted(files.items()):
            info = tarfile.TarInfo(f"/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return out


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicySourceError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PolicySourceError(f"data file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicySourceError(f"data file {path} must hold a JSON object of settings")
    return doc


class DecisionEngine(Protocol):
    """What the service needs from an engine."""

    name: str

    async def start(self) -> None: ...

    async def decide(self, doc: Mapping[str, Any]) -> Decision: ...

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]: ...

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]: ...

    async def check_ready(self) -> None: ...

    async def close(self) -> None: ...


def _decision_from(value: Any) -> Decision:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("allow"), bool)
        or not isinstance(value.get("reason"), str)
    ):
        raise PolicyError("the policy's decision is not {allow: bool, reason: string}")
    return Decision(value["allow"], value["reason"])


def _allowed_from(
    value: Any, catalogue: Catalogue | None, what: str = ALLOWED_TOOLS
) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise PolicyError(f"the policy's {what} is not {{server: [name, ...]}}")
    return normalize_allowed(value, (catalogue or {}).keys())


_PROBE_INPUT: dict[str, Any] = {"method": "initialize", "server": "mcpBroker", "claims": {}}


# ------------------------------------------------------------------------------------------
# Embedded: rego-cpp (regopy)
# ------------------------------------------------------------------------------------------
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
                raise PolicyError(f"policy evaluation failed: {_first_line(exc)}") from None
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
    return "; ".join(found) if found else _first_line(exc)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


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
        self._inline.query(DECISION, _PROBE_INPUT)

    async def decide(self, doc: Mapping[str, Any]) -> Decision:
        return self.decide_sync(doc)

    def decide_sync(self, doc: Mapping[str, Any]) -> Decision:
        """One decision. The policy and its data never change during the engine's life, so a
        decision is a pure function of the input: repeated inputs are answered from an LRU cache
        (``cache_size`` 0 turns it off)."""
        if self._cache_size <= 0:
            return _decision_from(self._inline.query(DECISION, doc))
        key = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        decision = _decision_from(self._inline.query(DECISION, doc))
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
            return _allowed_from(self._worker.query(ALLOWED_TOOLS, doc), None)
        return allowed_from_parts(self._worker.query(ALLOWED_TOOLS_PARTS, doc), index)

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.allowed_prompts_sync, doc)

    def allowed_prompts_sync(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        """Prompts per server: few names per user, evaluated by the policy itself."""
        given = doc.get("catalogue")
        catalogue = given if isinstance(given, dict) else self._source.catalogue
        value = self._worker.query(ALLOWED_PROMPTS, doc)
        return _allowed_from(value, catalogue, ALLOWED_PROMPTS)

    async def check_ready(self) -> None:
        return None

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the tool-list worker thread (the synchronous form of :meth:`close`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------
# OPA server (opa-python-client)
# ------------------------------------------------------------------------------------------
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
                    f"OPA at {self.url} refused the request: {_first_line(exc)}"
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

    async def decide(self, doc: Mapping[str, Any]) -> Decision:
        return _decision_from(await self._query(DECISION, doc))

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        value = await self._query(ALLOWED_TOOLS, doc)
        return _allowed_from(value, doc.get("catalogue") or self._source.catalogue)

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]:
        value = await self._query(ALLOWED_PROMPTS, doc)
        return _allowed_from(value, doc.get("catalogue") or self._source.catalogue, ALLOWED_PROMPTS)

    async def check_ready(self) -> None:
        await self.decide(_PROBE_INPUT)

    async def close(self) -> None:
        await self._client.close_connection()


def create_engine(
    kind: str, source: PolicySource, opa: OpaOptions | None = None, *, cache_size: int = 4096
) -> DecisionEngine:
    if kind == "embedded":
        return EmbeddedEngine(source, cache_size=cache_size)
    if kind == "opa":
        return OpaServerEngine(source, opa or OpaOptions())
    raise ValueError(f"unknown engine {kind!r}; choose embedded or opa")
