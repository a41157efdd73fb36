"""The only module that talks to API servers: one pooled aiohttp session per cluster.

Every call carries the caller's token as a header on a shared connection pool (no client and no
TLS handshake per call), is admitted by the session's access-control middleware
(:mod:`mcp_backend.access.client_middleware`) as it is sent, and maps upstream failures to
:mod:`mcp_backend.errors` with messages naming the cluster.
"""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import aiohttp

from kmg_common.tracing import Tracing
from mcp_backend.access.client_middleware import AccessControlMiddleware
from mcp_backend.access.policy import AccessPolicy, ApiPath, parse_path
from mcp_backend.audit import USER_AGENT, caller_headers
from mcp_backend.cluster_config import ClusterConfig
from mcp_backend.config import Settings
from mcp_backend.errors import ClusterError, InvalidArguments, TooLarge, Unreachable
from mcp_backend.kube.failures import ERROR_BODY_MAX, client_error_text, refusal, short
from mcp_backend.kube.json_body import loads_json
from mcp_backend.kube.streams import READ_CHUNK, ListStream, TextTail, read_tail
from mcp_backend.kube.tables import decode_table
from mcp_backend.metrics import Metrics

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class KubeClient:
    """Pooled HTTP access to one API server; the token is supplied per call."""

    def __init__(
        self,
        cluster: ClusterConfig,
        settings: Settings,
        access: AccessPolicy,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self.cluster = cluster
        self.tracing = tracing
        self.settings = settings
        self.access = access
        self.metrics = metrics
        self.connections_opened = 0
        self._access_control = AccessControlMiddleware(access, cluster.server)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.cluster.name

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.cluster.server.startswith("http://"):
            return False
        if self.cluster.insecure_skip_tls_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        pem = self.cluster.ca_pem()
        return ssl.create_default_context(cadata=pem) if pem else ssl.create_default_context()

    def session(self) -> aiohttp.ClientSession:
        """The cluster's shared session, created on first use inside the running loop."""
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(self._on_connection)
            if self.tracing is not None:  # a span per API call, its traceparent sent along
                self.tracing.add_client_hooks(trace, f"kube-apiserver/{self.name}")
            connector = aiohttp.TCPConnector(
                limit=self.settings.pool_size,
                ssl=self._ssl(),
                keepalive_timeout=60,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                base_url=self.cluster.server + "/",
                connector=connector,
                trace_configs=[trace],
                middlewares=(self._access_control,),  # every request admitted as it is sent
                timeout=aiohttp.ClientTimeout(
                    total=self.settings.request_timeout_s,
                    sock_connect=self.settings.connect_timeout_s,
                ),
                auto_decompress=True,
                raise_for_status=False,
                headers={"User-Agent": USER_AGENT},  # the API server's audit log shows it
            )
        return self._session

    async def _on_connection(self, *_: Any) -> None:
        self.connections_opened += 1
        self.metrics.upstream_connections.labels(self.name).inc()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        token: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout_s: float | None = None,
        text: bool = False,
        tail_bytes: int | None = None,
    ) -> Any:
        """One API call. Returns parsed JSON (or text when ``text``, or a :class:`TextTail` of a
        body of any size read in bounded memory when ``tail_bytes``); raises ClusterError."""
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        parsed = subject_of(path)
        headers = caller_headers(token, Accept=accept)
        if data is not None:
            headers["Content-Type"] = content_type
        session = self.session()
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else session.timeout
        try:
            async with session.request(
                method, path.lstrip("/"), params=params, data=data, headers=headers, timeout=timeout
            ) as resp:
                status = resp.status
                if tail_bytes is not None and status < 400:
                    raw, skipped = await read_tail(resp, tail_bytes)
                    self.metrics.upstream_bytes.labels(self.name).inc(len(raw) + skipped)
                else:
                    raw, skipped = await self._read_body(resp, method, path, parsed), 0
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc, f"answer {method}", path, timeout_s) from None
        self.metrics.upstream_requests.labels(self.name, f"{status // 100}xx").inc()
        if status >= 400:
            raise await self.refusal(token, method, path, parsed, status, raw)
        if tail_bytes is not None:
            return TextTail(raw.decode("utf-8", errors="replace"), skipped)
        if text:
            return raw.decode("utf-8", errors="replace")
        if not raw:
            return {}
        result = decode_table(raw) if accept == TABLE_ACCEPT else None
        try:
            if result is None:
                result = loads_json(raw)
        except ValueError:
            raise ClusterError(
                f"cluster {self.name!r} answered {method} {short(path)} with non-JSON content",
                status=status,
            ) from None
        return self.access.filter_response(parsed, result)

    async def _read_body(
        self, resp: aiohttp.ClientResponse, method: str, path: str, parsed: ApiPath | None
    ) -> bytes:
        """The whole body, or :class:`TooLarge` once it passes ``max_response_bytes`` (a
        refusal's body: its first 64 KiB, where the Status message is)."""
        limit = self.settings.max_response_bytes
        if resp.status >= 400:
            raw = await resp.content.read(ERROR_BODY_MAX)
            self.metrics.upstream_bytes.labels(self.name).inc(len(raw))
            return raw
        if resp.content_length is not None and resp.content_length > limit:
            raise self._too_large(method, path, parsed, limit)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            body += chunk
            self.metrics.upstream_bytes.labels(self.name).inc(len(chunk))
            if len(body) > limit:
                raise self._too_large(method, path, parsed, limit)
        return bytes(body)

    def _too_large(self, method: str, path: str, parsed: ApiPath | None, limit: int) -> TooLarge:
        self.metrics.upstream_requests.labels(self.name, "too_large").inc()
        what = f"{method} {short(path)}"
        if parsed is not None:
            what = f"{parsed.verb(method)} {parsed.describe()}"
        return TooLarge(
            f"cluster {self.name!r} answered {what} with more than {limit} bytes, the most this "
            "server reads of one answer (setting max_response_bytes); ask for less: a namespace, "
            "a labelSelector or fieldSelector, or a smaller limit"
        )

    @contextlib.asynccontextmanager
    async def stream_list(
        self,
        token: str,
        path: str,
        *,
        params: Mapping[str, str | int],
        accept: str,
        array_keys: Collection[str],
        decode: Callable[[bytes], Any],
    ) -> AsyncIterator[ListStream]:
        """A GET of a list answered piece by piece: ``async with`` gives a :class:`ListStream`
        whose :meth:`~ListStream.read` hands out the decoded, redacted elements of the array
        member named in ``array_keys`` (``items``, ``rows``) as they arrive. Leaving the block
        drops the rest of the body unread (the connection is closed, not reused)."""
        parsed = subject_of(path)
        headers = caller_headers(token, Accept=accept)
        try:
            async with self.session().get(path.lstrip("/"), params=params, headers=headers) as resp:
                status = resp.status
                self.metrics.upstream_requests.labels(self.name, f"{status // 100}xx").inc()
                if status >= 400:
                    raw = await self._read_body(resp, "GET", path, parsed)
                    raise await self.refusal(token, "GET", path, parsed, status, raw)
                yield ListStream(self, resp, parsed, array_keys, decode)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc, "answer GET", path) from None

    def _unreachable(
        self,
        exc: TimeoutError | aiohttp.ClientError,
        what: str,
        path: str,
        timeout_s: float | None = None,
    ) -> Unreachable:
        """The error (and metric) of a request that timed out or could not reach the cluster:
        ``what`` is what the cluster did not do in time (``answer GET``, ``send GET``)."""
        if isinstance(exc, TimeoutError):
            self.metrics.upstream_requests.labels(self.name, "timeout").inc()
            limit = timeout_s or self.settings.request_timeout_s
            return Unreachable(
                f"cluster {self.name!r} at {self.cluster.server} did not {what} {short(path)} "
                f"within {limit:g}s; it may be overloaded or unreachable"
            )
        self.metrics.upstream_requests.labels(self.name, "unreachable").inc()
        return Unreachable(
            f"cluster {self.name!r} at {self.cluster.server} is unreachable: "
            f"{client_error_text(exc)}; check the cluster address and that it is up"
        )

    async def refusal(
        self, token: str, method: str, path: str, parsed: ApiPath | None, status: int, raw: bytes
    ) -> ClusterError:
        """The error of this cluster's refusal of a call made with ``token``
        (:func:`~mcp_backend.kube.failures.refusal`)."""
        return await refusal(
            self.cluster, method, path, parsed, status, raw, functools.partial(self.whoami, token)
        )

    async def whoami(self, token: str) -> str:
        """The user name the API server derives from ``token`` (SelfSubjectReview), or '?'."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            review = await self.request(
                token, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body
            )
        except ClusterError:
            return "?"
        return str(((review.get("status") or {}).get("userInfo") or {}).get("username", "?"))

    @contextlib.asynccontextmanager
    async def stream_text(
        self, token: str, path: str, *, params: Mapping[str, str | int]
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """A GET whose text body is read piece by piece: ``async with`` gives the body's stream
        (after the access check and the status: a refusal raises as :meth:`request` does).
        Leaving the block drops the rest unread; the connection is closed, not reused."""
        parsed = subject_of(path)
        headers = caller_headers(token, Accept="text/plain,application/json")
        try:
            async with self.session().get(path.lstrip("/"), params=params, headers=headers) as resp:
                self.metrics.upstream_requests.labels(self.name, f"{resp.status // 100}xx").inc()
                if resp.status >= 400:
                    raw = await resp.content.read(64 * 1024)
                    raise await self.refusal(token, "GET", path, parsed, resp.status, raw)
                yield resp.content
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc, "send GET", path) from None


def subject_of(path: str) -> ApiPath | None:
    """What a call on ``path`` is about, for its messages and the redaction of its answer (the
    path's shape checked first). The access policy itself is enforced on the request as it is
    sent, by the session's :class:`AccessControlMiddleware`."""
    _check_path(path)
    return parse_path(path)


def _check_path(path: str) -> None:
    """Refuse paths the HTTP layer would rewrite ('..', '.', query or fragment characters), so
    the access check always sees the path the API server will serve."""
    parts = path.split("/")
    if any(p in (".", "..") for p in parts) or any(c in path for c in "?#%\\"):
        raise InvalidArguments(f"invalid object name or namespace in request path {path!r}")
