"""OPA bundles: reading one into a :class:`PolicySource`, and polling a bundle service for them.

A bundle is a gzipped tar as ``opa build`` or ``mcp-policy bundle`` writes it: Rego modules
(``*.rego``, tests skipped), data files (``data.json`` / ``data.yaml``, placed at the path of
their folder: ``/data.json`` is the whole tree, ``/mcp/config/data.json`` is ``data.mcp.config``)
and an optional ``.manifest`` with the ``revision``. The policy reads ``data.mcp.config`` (which
the bundle must contain, an empty object at least: a bundle built without its data would
otherwise silently drop the deny list) and optionally ``data.mcp.catalogue``.

:class:`BundlePoller` fetches a bundle URL the way OPA's bundle plugin does: a GET every
``min_delay_s``..``max_delay_s`` (random, so replicas spread out), with ``If-None-Match`` set to
the last ``ETag``; ``304 Not Modified`` means nothing changed and costs nothing. Bundle
signatures (``.signatures.json``) are not verified: authenticate the bundle server with TLS
(``bundle.ca_file``) and the service to it with a bearer token (``bundle.token_file``).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import yaml

from gateway_plugins.policy import input as policy_input
from gateway_plugins.policy.input import InputError
from gateway_plugins.policy.policy_source import PolicySource, PolicySourceError
from gateway_plugins.policy.policy_source import check_strings as check_setting_strings

log = logging.getLogger(__name__)

DATA_FILES = ("data.json", "data.yaml", "data.yml")


@dataclass(frozen=True)
class Bundle:
    source: PolicySource
    revision: str


def _merge(tree: dict[str, Any], path: tuple[str, ...], value: Any, where: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PolicySourceError(f"bundle: {where} is placed under a non-object value")
        node = child
    if not path:
        if not isinstance(value, dict):
            raise PolicySourceError(f"bundle: {where} at the root must hold a JSON object")
        for key, item in value.items():
            _merge(tree, (key,), item, where)
        return
    key = path[-1]
    current = node.get(key)
    if isinstance(current, dict) and isinstance(value, dict):
        for sub, item in value.items():
            _merge(current, (sub,), item, where)
    elif key in node:
        raise PolicySourceError(f"bundle: {where} sets data.{'.'.join(path)} a second time")
    else:
        node[key] = value


def _members(payload: bytes, max_bytes: int) -> dict[str, bytes]:
    """Regular files of the tar.gz by normalised path; bounded in size (no tar bombs)."""
    try:
        raw = gzip.GzipFile(fileobj=io.BytesIO(payload)).read(max_bytes + 1)
    except (OSError, EOFError) as exc:
        raise PolicySourceError(f"bundle: not a gzip file ({exc})") from None
    if len(raw) > max_bytes:
        raise PolicySourceError(f"bundle: larger than {max_bytes} bytes unpacked; refused")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", ".")]
                if not parts or ".." in parts:
                    raise PolicySourceError(f"bundle: file name {member.name!r} refused")
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files["/".join(parts)] = extracted.read()
    except tarfile.TarError as exc:
        raise PolicySourceError(f"bundle: not a tar archive ({exc})") from None
    return files


def _data_value(name: str, blob: bytes) -> Any:
    try:
        if name.endswith(".json"):
            return json.loads(blob)
        return yaml.safe_load(blob)
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicySourceError(f"bundle: {name} cannot be parsed: {str(exc)[:200]}") from None


def read_bundle(payload: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> Bundle:
    """The policy source in a bundle; :class:`PolicySourceError` names what is wrong."""
    files = _members(payload, max_bytes)
    modules: dict[str, str] = {}
    tree: dict[str, Any] = {}
    revision = ""
    for name, blob in sorted(files.items()):
        base = name.rsplit("/", 1)[-1]
        if name == ".manifest":
            manifest = _data_value("manifest.json", blob)
            if isinstance(manifest, dict):
                revision = str(manifest.get("revision", ""))
        elif name.endswith(".rego"):
            if not name.endswith("_test.rego"):
                try:
                    modules[name] = blob.decode("utf-8")
                except UnicodeDecodeError:
                    raise PolicySourceError(f"bundle: {name} is not UTF-8 text") from None
        elif base in DATA_FILES:
            folder = tuple(name.split("/")[:-1])
            _merge(tree, folder, _data_value(name, blob), name)
    if not modules:
        raise PolicySourceError("bundle: no Rego modules (*.rego) in it")
    mcp = tree.get("mcp")
    config = mcp.get("config") if isinstance(mcp, dict) else None
    if not isinstance(config, dict):
        raise PolicySourceError(
            "bundle: no data.mcp.config object (the policy's settings: deny list, grants); "
            "build the bundle with `mcp-policy bundle` or put the settings at mcp/config/data.json"
        )
    check_setting_strings(config, "bundle data.mcp.config")
    catalogue = None
    raw_catalogue = mcp.get("catalogue") if isinstance(mcp, dict) else None
    if raw_catalogue is not None:
        if not isinstance(raw_catalogue, Mapping):
            raise PolicySourceError("bundle: data.mcp.catalogue must be {server: [tool, ...]}")
        try:
            catalogue = policy_input.load_catalogue(raw_catalogue)
        except InputError as exc:
            raise PolicySourceError(f"bundle: data.mcp.catalogue: {exc}") from None
    return Bundle(PolicySource(modules, config, catalogue), revision)


@dataclass(frozen=True)
class Fetched:
    """One poll: ``payload`` is None when the server answered 304 (unchanged)."""

    payload: bytes | None
    etag: str | None


class BundleFetchError(Exception):
    """The bundle service did not give a bundle (unreachable, error status, too big)."""


class BundlePoller:
    """GET the bundle URL with ``If-None-Match``; one connection pool for the service's life.

    The caller sets :attr:`etag` once it has dealt with a payload (activated it, or refused it:
    a broken bundle is not downloaded again until the server has a new one)."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        min_delay_s: float,
        max_delay_s: float,
        max_bytes: int,
        token: str | None = None,
    ) -> None:
        self.url = url
        self._session = session
        self._min = min_delay_s
        self._max = max(max_delay_s, min_delay_s)
        self._max_bytes = max_bytes
        self._token = token
        self.etag: str | None = None

    def delay(self) -> float:
        return random.uniform(self._min, self._max)  # noqa: S311 - spreading polls, not secrets

    async def fetch(self) -> Fetched:
        headers = {"Accept-Encoding": "identity"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session.get(self.url, headers=headers, allow_redirects=False) as resp:
                if resp.status == 304:
                    return Fetched(None, self.etag)
                if resp.status != 200:
                    raise BundleFetchError(f"the bundle service answered HTTP {resp.status}")
                payload = await resp.content.read(self._max_bytes + 1)
                if len(payload) > self._max_bytes:
                    raise BundleFetchError(
                        f"the bundle is larger than bundle.max_bytes ({self._max_bytes})"
                    )
                etag = resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BundleFetchError(
                f"the bundle service is unreachable ({type(exc).__name__})"
            ) from None
        return Fetched(payload, etag)
