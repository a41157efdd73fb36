"""The Host and Origin rule: what each service accepts, derived from its settings."""

from __future__ import annotations

import pytest

from kmg_common.host_origin import (
    HostOriginRule,
    PatternError,
    host_pattern,
    listens_on_loopback,
    origin_pattern,
    public_url,
)


def test_on_loopback_only_loopback_names_and_origins_pass() -> None:
    rule = HostOriginRule.derive("127.0.0.1")
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "localhost"):
        assert rule.refusal(host, None) is None, host
    for origin in ("http://localhost:6274", "http://127.0.0.1:3000", "http://[::1]:9"):
        assert rule.refusal("127.0.0.1:8080", origin) is None, origin
    # A DNS rebinding page: its own name in Host (and Origin), resolved to 127.0.0.1.
    rebinding = rule.refusal("evil.example:8080", "http://evil.example:8080")
    assert rebinding is not None
    assert (rebinding.status, rebinding.error) == (421, "host_not_allowed")
    assert "'evil.example:8080'" in rebinding.message
    assert "allowed_hosts" in rebinding.message
    # A cross-site page calling through a loopback name.
    cross_site = rule.refusal("127.0.0.1:8080", "http://evil.example")
    assert cross_site is not None
    assert (cross_site.status, cross_site.error) == (403, "origin_not_allowed")
    assert "allowed_origins" in cross_site.message
    # Look-alikes of the loopback names are not loopback names.
    for host in ("localhost.evil.example", "127.0.0.1.nip.io:80", "127.0.0.2:8080", ""):
        assert rule.refusal(host, None) is not None, host
    for origin in ("https://localhost:6274", "http://localhost.evil.example", "null"):
        assert rule.refusal("localhost:1", origin) is not None, origin
    assert rule.refusal(None, None) is not None  # no Host header at all


def test_the_public_url_and_configured_values_are_added() -> None:
    rule = HostOriginRule.derive(
        "0.0.0.0",  # noqa: S104 - a pod's listen address
        allowed_hosts=["Kubernetes-MCP.mcp.local", "mcp-backend.kmg-system.svc.cluster.local:*"],
        allowed_origins=["https://App.example.com/"],
        public_urls=["https://mcp.example.com/mcp", None],
    )
    assert rule.refusal("mcp.example.com", "https://mcp.example.com") is None
    assert rule.refusal("mcp.example.com:443", None) is None
    assert rule.refusal("kubernetes-mcp.mcp.local", "https://app.example.com") is None
    assert rule.refusal("mcp-backend.kmg-system.svc.cluster.local:8080", None) is None
    assert rule.refusal("mcp-backend.kmg-system.svc.cluster.local", None) is not None
    assert rule.refusal("10.244.0.7:8080", None) is not None  # a pod IP: not configured
    # Listening on every interface is not loopback: a local page is a foreign origin there.
    assert rule.refusal("localhost:8080", "http://localhost:6274") is not None
    assert rule.refusal("mcp.example.com", "http://mcp.example.com") is not None  # scheme


def test_a_specific_listen_address_is_a_host() -> None:
    assert HostOriginRule.derive("10.1.2.3").refusal("10.1.2.3:8080", None) is None
    assert HostOriginRule.derive("fd00::7").refusal("[fd00::7]:8080", None) is None
    assert HostOriginRule.derive("::1").refusal("[::1]:8080", "http://[::1]:3000") is None
    for wildcard in ("0.0.0.0", "::"):  # noqa: S104
        rule = HostOriginRule.derive(wildcard)
        assert rule.refusal(f"{wildcard}:8080", None) is not None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("10.0.0.1", False),
        ("mcp.example.com", False),
    ],
)
def test_listens_on_loopback(address: str, loopback: bool) -> None:
    assert listens_on_loopback(address) is loopback


def test_patterns_are_normalised() -> None:
    assert host_pattern(" MCP.Example.com:* ") == "mcp.example.com:*"
    assert host_pattern("[::1]:8080") == "[::1]:8080"
    assert origin_pattern("HTTPS://App.Example.com/") == "https://app.example.com"
    assert origin_pattern("http://localhost:*") == "http://localhost:*"


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        ("https://mcp.example.com/mcp", "'mcp.example.com'"),
        ("*", "wildcard"),
        ("*.example.com", "wildcard"),
        ("", "not a host name"),
        ("mcp example.com", "not a host name"),
    ],
)
def test_host_entries_that_cannot_mean_a_host_are_refused(entry: str, hint: str) -> None:
    with pytest.raises(PatternError, match=r"allowed_hosts entry") as caught:
        host_pattern(entry)
    assert hint in str(caught.value)


@pytest.mark.parametrize(
    "entry", ["app.example.com", "https://app.example.com/ui", "https://*.example.com", "null", "*"]
)
def test_origin_entries_that_cannot_mean_an_origin_are_refused(entry: str) -> None:
    with pytest.raises(PatternError, match=r"allowed_origins entry .* is not an origin"):
        origin_pattern(entry)


def test_the_public_urls_origin_is_the_one_browsers_send() -> None:
    """Browsers leave the scheme's default port and any user info out of ``Origin``."""
    rule = HostOriginRule.derive(
        "0.0.0.0",  # noqa: S104
        public_urls=["https://user:secret@MCP.example.com:443/mcp", "http://[fd00::1]:8888/"],
    )
    assert rule.refusal("mcp.example.com", "https://mcp.example.com") is None
    assert rule.refusal("[fd00::1]:8888", "http://[fd00::1]:8888") is None
    assert not any("secret" in value for value in rule.hosts + rule.origins)
    assert "https://mcp.example.com:443" not in rule.origins


@pytest.mark.parametrize(
    "value", ["mcp.example.com/mcp", "ftp://mcp.example.com", "https:///mcp", "http://h:port/"]
)
def test_a_public_url_that_names_no_reachable_host_is_refused(value: str) -> None:
    with pytest.raises(PatternError, match="is not a public URL"):
        public_url(value)
