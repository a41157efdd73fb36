"""JWKS cache per issuer over one shared aiohttp session.

Keys are found through OIDC discovery (``{issuer}/.well-known/openid-configuration`` →
``jwks_uri``) unless a ``jwks_uri`` is configured. An unknown ``kid`` triggers a refetch, at most
once per ``min_refetch_interval_s`` per issuer, and concurrent refetches coalesce into one request.
When a refresh fails the keys already loaded keep working.

Keys of an ``https`` issuer are only loaded over ``https``: a discovered ``jwks_uri`` with another
scheme is refused, and so is a redirect that ends on plain HTTP. Plain-HTTP key URLs are accepted
only for a plain-HTTP issuer (local test issuers) or when configured explicitly (``jwks_uri``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

log = logging.getLogger(__name__)

_MAX_DOC_BYTES = 512 * 1024


class JWKSError(Exception):
    """The issuer's keys cannot be obtained (network, HTTP status, bad document)."""


class UnknownKey(Exception):
    """The issuer's key set has no key with that ``kid`` (after any allowed refetch)."""


@dataclass
class _IssuerKeys:
    jwks_uri: str | None
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = 0.0  # monotonic time of the last successful fetch
    attempted_at: float = float("-inf")  # monotonic time of the last attempt
    last_error: str = ""  # why the last attempt failed ("" after a success)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JWKSCache:
    """Signing keys per issuer; ``get_key`` is the hot path and normally does no I/O."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        min_refetch_interval_s: float = 30.0,
        max_age_s: float = 3600.0,
    ) -> None:
        self._session = session
        self._min_refetch = min_refetch_interval_s
        self._max_age = max_age_s
        self._issuers: dict[str, _IssuerKeys] = {}
        self.fetches = 0  # successful JWKS fetches, for metrics and tests

    def register(self, issuer: str, jwks_uri: str | None = None) -> None:
        if issuer not in self._issuers:
            self._issuers[issuer] = _IssuerKeys(jwks_uri)
            if jwks_uri is not None and _is_https(issuer) and not _is_https(jwks_uri):
                log.warning(
                    "issuer %s: the configured jwks_uri %s is not https; its keys can be "
                    "tampered with in transit",
                    issuer,
                    jwks_uri,
                )

    def loaded(self, issuer: str) -> bool:
        entry = self._issuers.get(issuer)
        return bool(entry and entry.keys)

    @property
    def issuers(self) -> list[str]:
        return list(self._issuers)

    async def get_key(self, issuer: str, kid: str) -> jwt.PyJWK:
        entry = self._entry(issuer)
        key = entry.keys.get(kid)
        if key is not None and time.monotonic() - entry.fetched_at <= self._max_age:
            return key
        # Unknown kid, or keys older than max_age: refetch, rate-limited either way, so an
        # unreachable issuer costs one attempt per interval and stale keys keep working.
        await self._refetch(issuer, entry, force=False)
        key = entry.keys.get(kid)
        if key is None:
            if not entry.keys:  # nothing ever loaded: an outage, not an unknown key
                raise _nothing_loaded(issuer, entry)
            raise UnknownKey(f"issuer {issuer} has no signing key with kid '{kid}'")
        return key

    async def refresh(self, issuer: str) -> None:
        """Fetch now (bypasses the rate limit); raises :class:`JWKSError` on failure."""
        entry = self._entry(issuer)
        async with entry.lock:
            await self._fetch(issuer, entry)

    async def ensure_loaded(self, issuer: str) -> None:
        """Load once if nothing is loaded yet (readiness); rate-limited like a refetch."""
        entry = self._entry(issuer)
        if not entry.keys:
            await self._refetch(issuer, entry, force=False)
            if not entry.keys:
                raise _nothing_loaded(issuer, entry)

    def _entry(self, issuer: str) -> _IssuerKeys:
        entry = self._issuers.get(issuer)
        if entry is None:
            raise JWKSError(f"issuer {issuer} is not configured")
        return entry

    async def _refetch(self, issuer: str, entry: _IssuerKeys, *, force: bool) -> None:
        seen_attempt = entry.attempted_at
        async with entry.lock:
            if entry.attempted_at != seen_attempt:
                return  # another task fetched while we waited: use its result
            if not force and time.monotonic() - entry.attempted_at < self._min_refetch:
                return  # rate limit: unknown kids cannot make us hammer the issuer
            try:
                await self._fetch(issuer, entry)
            except JWKSError as exc:
                if not entry.keys:
                    raise
                log.warning("JWKS refresh failed for %s, keeping cached keys: %s", issuer, exc)

    async def _fetch(self, issuer: str, entry: _IssuerKeys) -> None:
        entry.attempted_at = time.monotonic()
        try:
            await self._load(issuer, entry)
        except JWKSError as exc:
            entry.last_error = str(exc)
            raise
        entry.last_error = ""

    async def _load(self, issuer: str, entry: _IssuerKeys) -> None:
        if entry.jwks_uri is None:
            discovery_url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
            discovery = await self._get_json(discovery_url)
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise JWKSError(f"OIDC discovery of {issuer} has no usable 'jwks_uri'")
            if _is_https(issuer) and not _is_https(uri):
                raise JWKSError(
                    f"OIDC discovery of {issuer} names a jwks_uri that is not https ({uri}); "
                    "keys of an https issuer are only loaded over https"
                )
            if discovery.get("issuer") != issuer:
                raise JWKSError(
                    f"OIDC discovery of {issuer} names issuer {discovery.get('issuer')!r}; "
                    "configure the issuer exactly as the tokens carry it"
                )
            entry.jwks_uri = uri
        document = await self._get_json(entry.jwks_uri)
        entry.keys = _parse_jwks(document, issuer)
        entry.fetched_at = time.monotonic()
        self.fetches += 1
        log.info("loaded %d signing key(s) for issuer %s", len(entry.keys), issuer)

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session.get(url, headers={"accept": "application/json"}) as resp:
                if _is_https(url) and resp.url.scheme != "https":
                    raise JWKSError(
                        f"GET {url} was redirected to plain HTTP ({resp.url.with_query(None)}); "
                        "refused"
                    )
                if resp.status != 200:
                    raise JWKSError(f"GET {url} answered HTTP {resp.status}")
                raw = await resp.content.read(_MAX_DOC_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JWKSError(f"GET {url} failed: {type(exc).__name__} {exc}".strip()) from None
        if len(raw) > _MAX_DOC_BYTES:
            raise JWKSError(f"GET {url}: document larger than {_MAX_DOC_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            raise JWKSError(f"GET {url}: response is not JSON") from None
        if not isinstance(data, dict):
            raise JWKSError(f"GET {url}: expected a JSON object")
        return data


def _nothing_loaded(issuer: str, entry: _IssuerKeys) -> JWKSError:
    last = f" (last attempt: {entry.last_error})" if entry.last_error else ""
    return JWKSError(f"no signing keys loaded for issuer {issuer}{last}")


def _is_https(url: str) -> bool:
    return url.lower().startswith("https://")


def _parse_jwks(document: dict[str, Any], issuer: str) -> dict[str, jwt.PyJWK]:
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise JWKSError(f"JWKS of {issuer} has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str) or raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # symmetric ("oct") keys are never accepted for verification
        try:
            keys[kid] = jwt.PyJWK(raw)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping unusable key %s of issuer %s: %s", kid, issuer, exc)
    if not keys:
        raise JWKSError(f"JWKS of {issuer} has no usable signing keys")
    return keys
