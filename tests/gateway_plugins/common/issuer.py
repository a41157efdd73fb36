"""A real OIDC issuer for unit tests: an aiohttp server on 127.0.0.1 serving discovery and a JWKS
built from keys generated with ``cryptography``, plus a signer for tokens of that issuer.

It is not a mock of Keycloak: it is a small real issuer whose keys the tests control, so
signature, ``kid`` rotation and outage cases can be produced on purpose. Keycloak-backed tests
live in the token exchange integration suite.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

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
    """Serves ``/realms/<realm>/.well-known/openid-configuration`` and ``.../certs``."""

    def __init__(self, realm: str = "test") -> None:
        self.realm = realm
        self.keys: dict[str, PrivateKey] = {"rsa-1": new_rsa()}
        self.hits = {"discovery": 0, "jwks": 0}
        self.failing = False  # answer 503 to everything while True
        self._server: TestServer | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None, "start() the issuer first"
        return str(self._server.make_url(f"/realms/{self.realm}"))

    async def start(self) -> LocalIssuer:
        app = web.Application()
        app.router.add_get(f"/realms/{self.realm}/.well-known/openid-configuration", self._disc)
        app.router.add_get(f"/realms/{self.realm}/protocol/openid-connect/certs", self._jwks)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

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
                "jwks_uri": f"{self.issuer}/protocol/openid-connect/certs",
                "token_endpoint": f"{self.issuer}/protocol/openid-connect/token",
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response({"keys": [public_jwk(k, v) for k, v in self.keys.items()]})

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
