"""A real OIDC issuer for unit tests: an aiohttp server on 127.0.0.1 serving discovery and a JWKS
built from keys generated with ``cryptography``, plus a signer for tokens of that issuer.

It is not a mock of Keycloak: it is a small real issuer whose keys the tests control, so
signature, ``kid`` rotation and outage cases can be produced on purpose. Keycloak-backed tests
live in the token exchange integration suite.
"""

from __future__ import annotations

import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(kid: str, key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "ES256"
    jwk.update({"kid": kid, "use": "sig"})
    return dict(jwk)


class LocalIssuer:
    """Serves ``/realms/<realm>/.well-known/openid-configuration`` and ``.../certs``.

    With ``tls`` (a server-side SSL context) it is an ``https`` issuer. ``jwks_uri`` overrides the
    key URL its discovery document names; ``/redirect`` answers 307 to ``redirect_to``.
    """

    def __init__(self, realm: str = "test", *, tls: ssl.SSLContext | None = None) -> None:
        self.realm = realm
        self.keys: dict[str, PrivateKey] = {"rsa-1": new_rsa()}
        self.hits = {"discovery": 0, "jwks": 0}
        self.failing = False  # answer 503 to everything while True
        self.jwks_uri: str | None = None
        self.redirect_to = ""
        self._tls = tls
        self._server: TestServer | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None, "start() the issuer first"
        return str(self._server.make_url(f"/realms/{self.realm}"))

    async def start(self) -> LocalIssuer:
        app = web.Application()
        app.router.add_get(f"/realms/{self.realm}/.well-known/openid-configuration", self._disc)
        app.router.add_get(f"/realms/{self.realm}/protocol/openid-connect/certs", self._jwks)
        app.router.add_get("/redirect", self._redirect)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server(ssl=self._tls)
        return self

    @property
    def certs_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def url(self, path: str) -> str:
        assert self._server is not None, "start() the issuer first"
        return str(self._server.make_url(path))

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _disc(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_uri or self.certs_url,
                "token_endpoint": f"{self.issuer}/protocol/openid-connect/token",
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response({"keys": [public_jwk(k, v) for k, v in self.keys.items()]})

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(self.redirect_to)

    def claims(self, sub: str = "user-1", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "preferred_username": sub,
            "aud": ["gateway"],
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str = "rsa-1",
        alg: str | None = None,
        key: PrivateKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        signing_key = key if key is not None else self.keys[kid]
        algorithm = alg or ("RS256" if isinstance(signing_key, rsa.RSAPrivateKey) else "ES256")
        all_headers = {"kid": kid, **(headers or {})}
        return jwt.encode(claims, signing_key, algorithm=algorithm, headers=all_headers)

    def token(self, sub: str = "user-1", *, kid: str = "rsa-1", **extra: Any) -> str:
        return self.sign(self.claims(sub, **extra), kid=kid)


@dataclass
class TLSIssuer:
    """An ``https`` local issuer and a client session that trusts its CA."""

    issuer: LocalIssuer
    session: aiohttp.ClientSession
