"""JWKS cache against a real local issuer: discovery, kid rotation, rate limit, coalescing."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from gateway_plugins.common.jwks import JWKSCache, JWKSError, UnknownKey
from tests.gateway_plugins.common.issuer import LocalIssuer, TLSIssuer, new_rsa


async def test_discovery_then_keys_loaded_once(issuer: LocalIssuer, session: aiohttp.ClientSession):
    cache = JWKSCache(session)
    cache.register(issuer.issuer)
    for _ in range(5):
        key = await cache.get_key(issuer.issuer, "rsa-1")
        assert key.key_type == "RSA"
    assert issuer.hits == {"discovery": 1, "jwks": 1}
    assert cache.loaded(issuer.issuer)


async def test_unknown_kid_refetches_new_key(issuer: LocalIssuer, session: aiohttp.ClientSession):
    cache = JWKSCache(session, min_refetch_interval_s=0.0)
    cache.register(issuer.issuer)
    await cache.get_key(issuer.issuer, "rsa-1")
    issuer.keys["rsa-2"] = new_rsa()  # the issuer rotates its keys
    key = await cache.get_key(issuer.issuer, "rsa-2")
    assert key.key_id == "rsa-2"
    assert issuer.hits["jwks"] == 2


async def test_unknown_kid_refetch_is_rate_limited(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    cache = JWKSCache(session, min_refetch_interval_s=60.0)
    cache.register(issuer.issuer)
    await cache.get_key(issuer.issuer, "rsa-1")
    for i in range(20):
        with pytest.raises(UnknownKey):
            await cache.get_key(issuer.issuer, f"garbage-{i}")
    assert issuer.hits["jwks"] == 1


async def test_concurrent_first_loads_coalesce(issuer: LocalIssuer, session: aiohttp.ClientSession):
    cache = JWKSCache(session)
    cache.register(issuer.issuer)
    keys = await asyncio.gather(*(cache.get_key(issuer.issuer, "rsa-1") for _ in range(50)))
    assert {k.key_id for k in keys} == {"rsa-1"}
    assert issuer.hits["jwks"] == 1


async def test_failed_refresh_keeps_cached_keys(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    cache = JWKSCache(session, min_refetch_interval_s=0.0)
    cache.register(issuer.issuer)
    await cache.get_key(issuer.issuer, "rsa-1")
    issuer.failing = True
    with pytest.raises(UnknownKey):
        await cache.get_key(issuer.issuer, "rsa-9")
    assert (await cache.get_key(issuer.issuer, "rsa-1")).key_id == "rsa-1"


async def test_unreachable_issuer_reports_clearly(session: aiohttp.ClientSession):
    cache = JWKSCache(session)
    cache.register("http://127.0.0.1:9/realms/none")  # discard port: connection refused
    with pytest.raises(JWKSError, match=r"GET http://127\.0\.0\.1:9/realms/none/\.well-known"):
        await cache.ensure_loaded("http://127.0.0.1:9/realms/none")


async def test_explicit_jwks_uri_skips_discovery(
    issuer: LocalIssuer, session: aiohttp.ClientSession
):
    cache = JWKSCache(session)
    cache.register(issuer.issuer, f"{issuer.issuer}/protocol/openid-connect/certs")
    await cache.ensure_loaded(issuer.issuer)
    assert issuer.hits == {"discovery": 0, "jwks": 1}


async def test_unconfigured_issuer_is_an_error(session: aiohttp.ClientSession):
    with pytest.raises(JWKSError, match="not configured"):
        await JWKSCache(session).get_key("https://nowhere", "k")


async def test_stale_keys_keep_working_without_hammering_a_down_issuer(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    cache = JWKSCache(session, min_refetch_interval_s=60.0, max_age_s=0.0)
    cache.register(issuer.issuer)
    await cache.get_key(issuer.issuer, "rsa-1")
    issuer.failing = True
    for _ in range(20):
        assert (await cache.get_key(issuer.issuer, "rsa-1")).key_id == "rsa-1"
    assert issuer.hits["jwks"] == 1  # every later call was inside the refetch interval


async def test_https_issuer_keys_load_over_https(tls_issuer: TLSIssuer) -> None:
    issuer = tls_issuer.issuer
    assert issuer.issuer.startswith("https://")
    cache = JWKSCache(tls_issuer.session)
    cache.register(issuer.issuer)
    assert (await cache.get_key(issuer.issuer, "rsa-1")).key_id == "rsa-1"


async def test_https_issuer_discovering_http_jwks_uri_is_refused(
    tls_issuer: TLSIssuer, issuer: LocalIssuer
) -> None:
    """A downgrade: the https issuer's discovery names a plain-HTTP key URL (here a real
    plain-HTTP issuer serving keys); no key is loaded and it is never fetched."""
    secure = tls_issuer.issuer
    secure.jwks_uri = issuer.certs_url
    assert secure.jwks_uri.startswith("http://")
    cache = JWKSCache(tls_issuer.session)
    cache.register(secure.issuer)
    with pytest.raises(JWKSError, match="not https") as info:
        await cache.ensure_loaded(secure.issuer)
    assert "keys of an https issuer are only loaded over https" in str(info.value)
    assert issuer.hits["jwks"] == 0
    assert not cache.loaded(secure.issuer)


async def test_https_jwks_uri_redirected_to_http_is_refused(
    tls_issuer: TLSIssuer, issuer: LocalIssuer
) -> None:
    secure = tls_issuer.issuer
    secure.jwks_uri = secure.url("/redirect")  # https, answers 307 to a plain-HTTP key URL
    secure.redirect_to = issuer.certs_url
    cache = JWKSCache(tls_issuer.session)
    cache.register(secure.issuer)
    with pytest.raises(JWKSError, match="redirected to plain HTTP"):
        await cache.ensure_loaded(secure.issuer)
    assert not cache.loaded(secure.issuer)


async def test_http_issuer_may_use_http_jwks_uri(
    issuer: LocalIssuer, session: aiohttp.ClientSession
) -> None:
    assert issuer.issuer.startswith("http://")  # local test issuers are plain HTTP
    cache = JWKSCache(session)
    cache.register(issuer.issuer)
    await cache.ensure_loaded(issuer.issuer)
    assert issuer.hits == {"discovery": 1, "jwks": 1}


async def test_explicit_http_jwks_uri_for_https_issuer_is_warned_about(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    cache = JWKSCache(session)
    with caplog.at_level(logging.WARNING, logger="gateway_plugins.common.jwks"):
        cache.register("https://kc.example/realms/mcp", "http://keycloak:8080/certs")
    assert "not https" in caplog.text
