"""Host and Origin checks: the transport security the MCP specification asks of HTTP servers.

A page on a foreign site can send requests from the user's browser to a server on the user's
machine or network, and DNS rebinding makes them look same-origin to the browser. Two headers
give such requests away: ``Origin`` (a browser names the page's site on cross-site requests and
on every POST) and ``Host`` (the name the browser resolved: the attacker's own). The rule, the
same in the three services:

* a request whose ``Origin`` is not allowed is refused with 403; a request without ``Origin``
  (clients that are not browsers, the gateway) is unaffected;
* a request whose ``Host`` is not allowed is refused with 421 (Misdirected Request).

Allowed hosts: the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``, any port), the listen
address when it is a specific one, the host of the service's public URL, and the configured
``allowed_hosts``. Allowed origins: the public URL's origin, the loopback origins when the service
listens on a loopback address (a local browser client such as the MCP Inspector), and the
configured ``allowed_origins``.

Patterns are those of the MCP SDK's ``TransportSecurityMiddleware``: an exact value, or
``name:*`` for any port. The backend hands the same lists to the SDK's transport;
``tests/gateway_plugins/common/test_host_origin.py`` checks both judge every value alike.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol
from urllib.parse import urlsplit

from pydantic import AfterValidator

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# Probes and scrapers reach a pod by its IP under any name; they serve nothing private.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOWED_HOSTS_DOC = (
    "Host header values accepted ('name', or 'name:*' for any port) besides the loopback names "
    "and a specific listen address, e.g. the Service name callers use; any other Host gets 421 "
    "(DNS rebinding protection; the ext_authz check routes and the probes are not checked)"
)
ALLOWED_ORIGINS_DOC = (
    "Origin header values of browser apps allowed to call (e.g. 'https://app.example.com'), "
    "besides http://localhost:*, http://127.0.0.1:*, http://[::1]:* when listening on loopback; "
    "any other Origin gets 403, requests without Origin are unaffected"
)
_SHOWN = 100  # characters of a refused header value quoted back
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9._-]*[a-z0-9])?)(:([0-9]{1,5}|\*))?")
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(.+)")


class PatternError(ValueError):
    """A setting (an ``allowed_hosts`` / ``allowed_origins`` entry, a public URL) that cannot mean
    what it is meant to."""


def host_pattern(value: str) -> str:
    """A validated ``allowed_hosts`` entry (lower case: browsers send host names that way)."""
    pattern = value.strip().lower()
    if "://" in pattern or "/" in pattern:
        raise PatternError(
            f"allowed_hosts entry {value!r} is a URL: give the Host header value, e.g. "
            f"{urlsplit(pattern).netloc or 'mcp.example.com'!r} (or 'name:*' for any port)"
        )
    if not _HOST.fullmatch(pattern):
        raise PatternError(
            f"allowed_hosts entry {value!r} is not a host name, 'name:port' or 'name:*' "
            "(a wildcard name would switch the check off: list the names instead)"
        )
    return pattern


def origin_pattern(value: str) -> str:
    """A validated ``allowed_origins`` entry: ``scheme://host[:port|:*]``, no path."""
    pattern = value.strip().lower().removesuffix("/")
    match = _ORIGIN.fullmatch(pattern)
    if match is None or not _HOST.fullmatch(match.group(2)):
        raise PatternError(
            f"allowed_origins entry {value!r} is not an origin such as "
            "'https://app.example.com' or 'http://localhost:*' (scheme, host, optional port; "
            "no path, no wildcard host)"
        )
    return pattern


def public_url(value: str) -> str:
    """A validated public URL (``resource_url``): http(s), a host, a numeric port if any."""
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        valid_port = False
    else:
        valid_port = True
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or not valid_port:
        raise PatternError(
            f"{value!r} is not a public URL such as 'https://mcp.example.com/mcp' "
            "(http or https, a host name, an optional numeric port)"
        )
    return value.strip()


def _host_patterns(values: list[str]) -> list[str]:
    return [host_pattern(v) for v in values]


def _origin_patterns(values: list[str]) -> list[str]:
    return [origin_pattern(v) for v in values]


# Settings field types: the entries validated (and lower-cased) when the settings load.
HostPatterns = Annotated[list[str], AfterValidator(_host_patterns)]
OriginPatterns = Annotated[list[str], AfterValidator(_origin_patterns)]


def listens_on_loopback(listen_host: str) -> bool:
    """Whether the listen address only accepts connections from this machine."""
    if listen_host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen_host.strip("[]")).is_loopback
    except ValueError:
        return False


def _specific_address(listen_host: str) -> str | None:
    """The listen address as a Host value, unless it is a wildcard or a name."""
    try:
        address = ipaddress.ip_address(listen_host.strip("[]"))
    except ValueError:
        return None
    if address.is_unspecified:
        return None
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _public_host_and_origin(url: str) -> tuple[str, str] | None:
    """The Host name and the Origin a browser sends for pages of ``url`` (no user info; the
    scheme's default port left out, as browsers serialize origins), or None without a host."""
    parts = urlsplit(url.strip())
    if not parts.hostname:
        return None
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    scheme = parts.scheme.lower()
    port = parts.port
    origin = f"{scheme}://{name}"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        origin += f":{port}"
    return name, origin


def _any_port(names: Iterable[str]) -> list[str]:
    return [pattern for name in names for pattern in (name, f"{name}:*")]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _matches(value: str, patterns: Sequence[str]) -> bool:
    """The SDK's matching: an exact value, or ``base:*`` and the value is ``base:<anything>``."""
    if value in patterns:
        return True
    return any(p.endswith(":*") and value.startswith(p[:-1]) for p in patterns)


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: HTTP status, error code, a message saying what to do."""

    status: int
    error: str
    message: str


@dataclass(frozen=True)
class HostOriginRule:
    """The Host and Origin values one service accepts."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    @classmethod
    def derive(
        cls,
        listen_host: str,
        *,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        public_urls: Iterable[str | None] = (),
    ) -> HostOriginRule:
        """The rule of a service listening on ``listen_host``, reached at ``public_urls``."""
        hosts = _any_port(LOOPBACK_NAMES)
        origins = []
        address = _specific_address(listen_host)
        if address is not None:
            hosts += _any_port([address])
        if listens_on_loopback(listen_host):
            origins += _any_port(f"http://{name}" for name in LOOPBACK_NAMES)
        for url in public_urls:
            public = _public_host_and_origin(url) if url else None
            if public is not None:
                hosts += _any_port([public[0]])
                origins.append(public[1])
        hosts += [host_pattern(h) for h in allowed_hosts]
        origins += [origin_pattern(o) for o in allowed_origins]
        return cls(_unique(hosts), _unique(origins))

    def host_allowed(self, host: str | None) -> bool:
        return bool(host) and _matches(host or "", self.hosts)

    def origin_allowed(self, origin: str | None) -> bool:
        return not origin or _matches(origin, self.origins)

    def refusal(self, host: str | None, origin: str | None) -> Refusal | None:
        """None when a request with these headers may be served, else why not."""
        if not self.host_allowed(host):
            shown = f"Host {_shown(host)!r}" if host else "a request without a Host header"
            return Refusal(
                421,
                "host_not_allowed",
                f"{shown} is not a name this server answers to (DNS rebinding protection): "
                "use a name it accepts (a loopback name, its public URL's host, a name in its "
                "allowed_hosts setting) or add this one to allowed_hosts",
            )
        if not self.origin_allowed(origin):
            return Refusal(
                403,
                "origin_not_allowed",
                f"Origin {_shown(origin or '')!r} may not call this server (cross-site request "
                "and DNS rebinding protection): list the browser app's origin in the "
                "allowed_origins setting; clients that are not browsers send no Origin header",
            )
        return None


class ListenSettings(Protocol):
    """What the rule of a service comes from: its listen address and the two settings."""

    @property
    def host(self) -> str: ...

    @property
    def allowed_hosts(self) -> list[str]: ...

    @property
    def allowed_origins(self) -> list[str]: ...


def service_rule(settings: ListenSettings, *public_urls: str | None) -> HostOriginRule:
    """The rule of a service configured by ``settings`` and reached at ``public_urls``."""
    return HostOriginRule.derive(
        settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
        public_urls=public_urls,
    )
