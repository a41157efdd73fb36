"""The shared aiohttp scaffolding, served for real on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway_plugins.common.middlewares import json_error
from gateway_plugins.common.service import NotReady, create_base_app, serve
from kmg_common.host_origin import HostOriginRule
from tests.testbed.ports import free_port

SECRET = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError(f"kaput {SECRET}")


async def _teapot(request: web.Request) -> web.Response:
    return json_error(418, "teapot", "short and stout")


class Flag:
    ready = False


@pytest.fixture
async def base_url() -> AsyncIterator[tuple[str, type[Flag]]]:
    async def check_ready() -> None:
        if not Flag.ready:
            raise NotReady("upstream not loaded yet")

    app = create_base_app("demo", ready_checks={"upstream": check_ready})
    app.router.add_get("/boom", _boom)
    app.router.add_get("/teapot", _teapot)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(100):
            try:
                async with client.get(f"{url}/healthz"):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
    Flag.ready = False
    yield url, Flag
    stop.set()
    await task


async def test_health_and_request_id(base_url: tuple[str, type[Flag]]) -> None:
    url, _ = base_url
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/healthz", headers={"x-request-id": "abc-1"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-request-id"] == "abc-1"
            assert (await resp.json())["status"] == "ok"
        async with client.get(f"{url}/healthz", headers={"x-request-id": "bad id !"}) as resp:
            generated = resp.headers["x-request-id"]
            assert len(generated) == 32
            assert generated != "bad id !"


async def test_unhandled_error_is_json_without_trace(base_url: tuple[str, type[Flag]]) -> None:
    url, _ = base_url
    async with aiohttp.ClientSession() as client, client.get(f"{url}/boom") as resp:
        assert resp.status == 500
        body = await resp.json()
        assert body["error"] == "internal_error"
        assert body["request_id"] == resp.headers["x-request-id"]
        text = str(body)
        assert "Traceback" not in text
        assert "kaput" not in text
        assert "eyJ" not in text


async def test_not_found_and_method_not_allowed_are_json(
    base_url: tuple[str, type[Flag]],
) -> None:
    url, _ = base_url
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"
        async with client.post(f"{url}/healthz") as resp:
            assert resp.status == 405
            assert (await resp.json())["error"] == "method_not_allowed"
        async with client.get(f"{url}/teapot") as resp:
            assert resp.status == 418
            assert (await resp.json())["message"] == "short and stout"


async def test_readyz_runs_checks(base_url: tuple[str, type[Flag]]) -> None:
    url, flag = base_url
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"] == {"upstream": "upstream not loaded yet"}
        flag.ready = True
        async with client.get(f"{url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["checks"] == {"upstream": "ok"}


async def test_metrics_count_requests_per_route(base_url: tuple[str, type[Flag]]) -> None:
    url, _ = base_url
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(f"{url}/teapot"):
                pass
        async with client.get(f"{url}/metrics") as resp:
            text = await resp.text()
    assert 'http_requests_total{method="GET",route="/teapot",status="418"} 3.0' in text
    assert "http_request_duration_seconds_bucket" in text


async def test_metric_labels_stay_bounded(base_url: tuple[str, type[Flag]]) -> None:
    url, _ = base_url
    async with aiohttp.ClientSession() as client:
        async with client.request("PURGE", f"{url}/teapot") as resp:
            assert resp.status == 405
        async with client.get(f"{url}/random-{id(client)}") as resp:
            assert resp.status == 404
        async with client.get(f"{url}/metrics") as resp:
            text = await resp.text()
    assert 'method="OTHER",route="unmatched",status="405"' in text
    assert "PURGE" not in text
    assert 'route="unmatched",status="404"' in text
    assert "random-" not in text


# -- Host and Origin checks ---------------------------------------------------------------------
@pytest.fixture
async def guarded_url() -> AsyncIterator[str]:
    """The scaffold with the rule of a service on loopback that also answers to svc.ns, an
    ext_authz-like route under the unchecked prefix /check, and a checked route /checkout that
    shares the prefix's letters (registered first, so it wins over ``/check{tail}``)."""
    rule = HostOriginRule.derive(
        "127.0.0.1", allowed_hosts=["svc.ns:*"], allowed_origins=["https://app.example.com"]
    )
    app = create_base_app("demo", host_origin=rule, unchecked_prefixes=("/check",))
    app.router.add_get("/teapot", _teapot)
    app.router.add_get("/checkout", _teapot)
    app.router.add_route("*", "/check{tail:.*}", _teapot)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(100):
            try:
                async with client.get(f"{url}/healthz"):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
    yield url
    stop.set()
    await task


async def _get(url: str, **headers: str) -> tuple[int, dict[str, object], dict[str, str]]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as resp:
        return resp.status, await resp.json(), {k.lower(): v for k, v in resp.headers.items()}


async def test_foreign_host_and_origin_are_refused_as_json(guarded_url: str) -> None:
    teapot = f"{guarded_url}/teapot"
    status, body, headers = await _get(teapot, Host="evil.example:8081")
    assert status == 421
    assert body["allow"] is False
    assert body["error"] == "host_not_allowed"
    assert "'evil.example:8081'" in str(body["reason"])
    assert body["request_id"] == headers["x-request-id"]
    status, body, _ = await _get(teapot, Origin="http://evil.example")
    assert (status, body["error"]) == (403, "origin_not_allowed")
    assert "allowed_origins" in str(body["reason"])
    # What is allowed reaches the handler.
    for headers_ in (
        {},
        {"Host": "svc.ns:8081"},
        {"Origin": "https://app.example.com"},
        {"Origin": "http://localhost:6274"},
    ):
        status, body, _ = await _get(teapot, **headers_)
        assert (status, body["error"]) == (418, "teapot"), headers_
    async with aiohttp.ClientSession() as client, client.get(f"{guarded_url}/metrics") as resp:
        text = await resp.text()
    assert 'http_requests_total{method="GET",route="/teapot",status="421"} 1.0' in text


async def test_probes_and_unchecked_routes_answer_any_host(guarded_url: str) -> None:
    foreign = {"Host": "evil.example", "Origin": "http://evil.example"}
    for path, expected in (("/healthz", 200), ("/readyz", 200), ("/check/mcp", 418)):
        status, _, _ = await _get(f"{guarded_url}{path}", **foreign)
        assert status == expected, path
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{guarded_url}/metrics", headers=foreign) as resp,
    ):
        assert resp.status == 200
    # Exempt is what the route is, not what the path starts with.
    status, body, _ = await _get(f"{guarded_url}/checkout", **foreign)
    assert (status, body["error"]) == (421, "host_not_allowed")
