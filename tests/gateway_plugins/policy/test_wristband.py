"""The signed tool-list header: ES256, verifiable with the public key, the broker's claim forms."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_plugins.policy.wristband import (
    CURRENT_HEADER,
    LEGACY_HEADER,
    WristbandForm,
    WristbandKeyError,
    WristbandSigner,
    generate_signing_key,
    load_signing_key,
    private_key_pem,
    verify,
)


def _signer(**kwargs: object) -> WristbandSigner:
    return WristbandSigner(generate_signing_key(), **kwargs)  # type: ignore[arg-type]


def test_legacy_header_carries_allowed_tools_as_a_json_string() -> None:
    signer = _signer(issuer="mcp-policy", lifetime_s=120)
    signed = signer.sign({"ns/a": ["pods_list", "pods_get"], "ns/b": []}, subject="u-1")
    assert set(signed.headers) == {LEGACY_HEADER}
    claims = verify(signed.headers[LEGACY_HEADER], signer.public_key_pem)
    assert isinstance(claims["allowed-tools"], str)
    assert json.loads(claims["allowed-tools"]) == {"ns/a": ["pods_get", "pods_list"], "ns/b": []}
    assert '"ns/b":[]' in claims["allowed-tools"]  # empty list stays [], never null
    assert claims["exp"] - claims["iat"] == 120
    assert claims["iss"] == "mcp-policy"
    assert claims["sub"] == "u-1"
    assert jwt.get_unverified_header(signed.headers[LEGACY_HEADER])["alg"] == "ES256"


def test_current_header_carries_allowed_capabilities() -> None:
    signer = _signer(form=WristbandForm.CURRENT)
    signed = signer.sign({"ns/a": ["pods_list"]})
    claims = verify(signed.headers[CURRENT_HEADER], signer.public_key_pem)
    assert json.loads(claims["allowed-capabilities"]) == {
        "tools": {"ns/a": ["pods_list"]},
        "prompts": {},
    }
    both = _signer(form=WristbandForm.BOTH).sign({})
    assert set(both.headers) == {LEGACY_HEADER, CURRENT_HEADER}


def test_wrong_key_and_expired_headers_do_not_verify() -> None:
    signer, other = _signer(lifetime_s=1), _signer()
    token = signer.sign({"ns/a": ["x"]}, now=time.time() - 10).headers[LEGACY_HEADER]
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, signer.public_key_pem)
    fresh = signer.sign({"ns/a": ["x"]}).headers[LEGACY_HEADER]
    with pytest.raises(jwt.InvalidSignatureError):
        verify(fresh, other.public_key_pem)


def test_jwks_matches_the_public_key_and_kid() -> None:
    signer = _signer()
    jwk = signer.jwks()["keys"][0]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")
    token = signer.sign({"ns/a": []}).headers[LEGACY_HEADER]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    key = jwt.PyJWK(jwk).key
    jwt.decode(token, key, algorithms=["ES256"])


def test_key_files(tmp_path: Path) -> None:
    good = tmp_path / "k.pem"
    good.write_bytes(private_key_pem(generate_signing_key()))
    assert isinstance(load_signing_key(good), ec.EllipticCurvePrivateKey)
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(WristbandKeyError, match="P-256"):
        load_signing_key(rsa_file)
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(private_key_pem(ec.generate_private_key(ec.SECP384R1())))  # type: ignore[arg-type]
    with pytest.raises(WristbandKeyError, match="ES256 only"):
        load_signing_key(p384)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(WristbandKeyError, match="not an unencrypted PEM"):
        load_signing_key(junk)
    with pytest.raises(WristbandKeyError, match="cannot read"):
        load_signing_key(tmp_path / "missing.pem")
