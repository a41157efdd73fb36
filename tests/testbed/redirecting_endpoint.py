"""A token endpoint that answers every request with a redirect, and the place it points to.

Two real aiohttp servers on 127.0.0.1: the endpoint answers ``status`` (307 unless changed) with
``Location`` = the other server, which records every request reaching it. A client that
followed the redirect would re-send its form (subject token, client secret or assertion) there:
``received`` must stay empty. Used by the token-exchange clients' redirect tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class RedirectingEndpoint:
    url: str = ""  # the token endpoint
    elsewhere: str = ""  # where it redirects to
    status: int = 307
    received: list[tuple[str, str]] = field(default_factory=list)  # (Authorization, body)


@contextlib.asynccontextmanager
async def redirecting_endpoint(
    path: str, elsewhere: str = "/collect"
) -> AsyncIterator[RedirectingEndpoint]:
    """Serve the endpoint at ``path``, redirecting to ``elsewhere`` (a path, query allowed) on
    the other server."""
    state = RedirectingEndpoint()

    async def collect(request: web.Request) -> web.Response:
        state.received.append((request.headers.get("Authorization", ""), await request.text()))
        return web.json_response({"access_token": "stolen", "expires_in": 60})

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=state.status, headers={"Location": state.elsewhere})

    other_app = web.Application()
    other_app.router.add_route("*", elsewhere.split("?", 1)[0], collect)
    other = TestServer(other_app, host="127.0.0.1")
    await other.start_server()
    app = web.Application()
    app.router.add_post(path, token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url(path))
    state.elsewhere = str(other.make_url(elsewhere))
    try:
        yield state
    finally:
        await server.close()
        await other.close()
