"""One bearer parser for the three services: what it accepts and what it refuses (fail closed)."""

from __future__ import annotations

import pytest

from gateway_plugins.policy import app as policy_app
from gateway_plugins.policy import pipeline as policy_pipeline
from gateway_plugins.policy import service as policy_service
from gateway_plugins.token_exchange import pipeline as exchange_pipeline
from kmg_common.bearer import bearer_token
from mcp_backend.transport.auth import extract_token


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def-ghi_jkl~", "abc.def-ghi_jkl~"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer abc==", "abc=="),
        ("Bearer sha256~opaque", "sha256~opaque"),
    ],
)
def test_accepts_one_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearer\ttoken",  # the scheme is separated by a space
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearerabc",
        "Bearer a b",  # two tokens
        "Bearer a\tb",
        "Bearer a\nb",
        "Bearer a,Bearer b",  # two Authorization headers folded into one
        "Bearer a, b",
    ],
)
def test_refuses_missing_blank_foreign_and_multiple(header: str | None) -> None:
    assert bearer_token(header) is None


def test_services_use_the_one_parser() -> None:
    """The plugins' handlers call this function, not a copy (a second parser would drift)."""
    assert exchange_pipeline.bearer_token is bearer_token
    assert policy_pipeline.bearer_token is bearer_token
    assert policy_service.bearer_token is bearer_token
    assert not hasattr(policy_app, "_bearer")


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bEaReR abc "}, "abc"),
        ({"authorization": "Bearer a b", "kubernetes-authorization": "Bearer k"}, "k"),
        ({"kubernetes-authorization": "bare-token"}, "bare-token"),
        ({"authorization": "Basic dXNlcjpwYXNz", "kubernetes-authorization": "k"}, "k"),
        ({"authorization": "Bearer a b"}, None),
        ({"authorization": "Bearer a,Bearer b"}, None),
        ({"kubernetes-authorization": "a b"}, None),
        ({"kubernetes-authorization": "a,b"}, None),
        ({"kubernetes-authorization": "Bearer"}, None),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({}, None),
    ],
)
def test_backend_extracts_with_the_same_rules(headers: dict[str, str], token: str | None) -> None:
    assert extract_token(headers) == token
