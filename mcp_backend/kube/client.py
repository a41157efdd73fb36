"""The only module that talks to API servers: one pooled aiohttp session per cluster.

Every call carries the caller's token as a header on a shared connection pool (no client and no
TLS handshake per call), is admitted by the session's access-control middleware
(:mod:`mcp_backend.access.client_middleware`) as it is sent, and maps upstream failures to
:mod:`mcp_backend.errors` with messages naming the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from kmg_common.tracing import Tracing
from mcp_backend.access.client_middleware import AccessControlMiddleware
from mcp_backend.access.policy import AccessPolicy, ApiPath, parse_path
from mcp_backend.audit import USER_AGENT, caller_headers
from mcp_backend.config import ClusterConfig, Settings
from mcp_backend.errors import (
    ClusterError,
    Forbidden,
    InvalidArguments,
    NotFound,
    TooLarge,
    Unauthorized,
    Unreachable,
)
from mcp_backend.kube.discovery import segment
from mcp_backend.kube.json_stream import ArrayStream
from mcp_backend.kube.tables import decode_table
from mcp_backend.metrics import Metrics

log = logging.getLogger(__name__)

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
_USER_IN_MESSAGE = re.compile(r'User "([^"]*)"')
_EXIT_STATUS = re.compile(r"exit (?:status|code) (\d+)\s*$")
READ_CHUNK = 64 * 1024
_ERROR_BODY_MAX = 64 * 1024  # of a refusal, only the Status message is used


@dataclass(frozen=True)
class ExecResult:
    """Output of one ``pods/exec``; ``truncated``: the output passed the bound, reading stopped
    there and the stream was closed (no exit code then)."""

    stdout: str
    stderr: str
    exit_code: int | None
    error: str | None
    truncated: bool = False
    bytes_read: int = 0


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

    @staticmethod
    def _about(path: str) -> ApiPath | None:
        """What a call on ``path`` is about, for its messages and the redaction of its answer
        (the path's shape checked first). The access policy is enforced on the request as it is
        sent, by the session's :class:`AccessControlMiddleware`."""
        _check_path(path)
        return parse_path(path)

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
        parsed = self._about(path)
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
                    raw, skipped = await _read_tail(resp, tail_bytes)
                    self.metrics.upstream_bytes.labels(self.name).inc(len(raw) + skipped)
                else:
                    raw, skipped = await self._read_body(resp, method, path, parsed), 0
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc, f"answer {method}", path, timeout_s) from None
        self.metrics.upstream_requests.labels(self.name, f"{status // 100}xx").inc()
        if status >= 400:
            raise await self._error(token, method, path, parsed, status, raw)
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
                f"cluster {self.name!r} answered {method} {_short(path)} with non-JSON content",
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
            raw = await resp.content.read(_ERROR_BODY_MAX)
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
        what = f"{method} {_short(path)}"
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
        parsed = self._about(path)
        headers = caller_headers(token, Accept=accept)
        try:
            async with self.session().get(path.lstrip("/"), params=params, headers=headers) as resp:
                status = resp.status
                self.metrics.upstream_requests.labels(self.name, f"{status // 100}xx").inc()
                if status >= 400:
                    raw = await self._read_body(resp, "GET", path, parsed)
                    raise await self._error(token, "GET", path, parsed, status, raw)
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
                f"cluster {self.name!r} at {self.cluster.server} did not {what} {_short(path)} "
                f"within {limit:g}s; it may be overloaded or unreachable"
            )
        self.metrics.upstream_requests.labels(self.name, "unreachable").inc()
        return Unreachable(
            f"cluster {self.name!r} at {self.cluster.server} is unreachable: "
            f"{_client_error_text(exc)}; check the cluster address and that it is up"
        )

    async def _error(
        self, token: str, method: str, path: str, parsed: ApiPath | None, status: int, raw: bytes
    ) -> ClusterError:
        message, reason = _status_message(raw)
        verb = parsed.verb(method) if parsed else method
        what = parsed.describe() if parsed else _short(path)
        where = f" in namespace {parsed.namespace!r}" if parsed and parsed.namespace else ""
        details: dict[str, Any] = {"cluster": self.name, "status": status, "verb": verb}
        if parsed:
            details |= {"resource": parsed.resource, "group": parsed.group}
            if parsed.namespace:
                details["namespace"] = parsed.namespace
        if status == 401:
            return Unauthorized(
                f"cluster {self.name!r} ({self.cluster.server}) rejected the bearer token "
                f"(401 Unauthorized) for {verb} {what}: the token is expired, malformed, or not "
                "issued for an issuer/audience this cluster trusts. Sign in again or use a token "
                "meant for this cluster.",
                status=401,
                reason=reason,
                details=details,
            )
        if status == 403:
            user = _USER_IN_MESSAGE.search(message)
            username = user.group(1) if user else await self.whoami(token)
            details["user"] = username
            return Forbidden(
                f"cluster {self.name!r}: user {username!r} may not {verb} {what}{where} "
                f"(403 Forbidden by the cluster's RBAC). API server said: {message}. Ask a "
                "cluster admin for a Role granting it, or use another namespace or context.",
                status=403,
                reason=reason,
                details=details,
            )
        if status == 404:
            return NotFound(
                f"cluster {self.name!r}: {message or 'not found'} ({verb} {what}{where})",
                status=404,
                reason=reason,
                details=details,
            )
        return ClusterError(
            f"cluster {self.name!r} refused {verb} {what}{where}: {message or f'HTTP {status}'}",
            status=status,
            reason=reason,
            details=details,
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
        parsed = self._about(path)
        headers = caller_headers(token, Accept="text/plain,application/json")
        try:
            async with self.session().get(path.lstrip("/"), params=params, headers=headers) as resp:
                self.metrics.upstream_requests.labels(self.name, f"{resp.status // 100}xx").inc()
                if resp.status >= 400:
                    raw = await resp.content.read(64 * 1024)
                    raise await self._error(token, "GET", path, parsed, resp.status, raw)
                yield resp.content
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc, "send GET", path) from None

    # -- exec ----------------------------------------------------------------------------------

    async def exec(
        self,
        token: str,
        namespace: str,
        pod: str,
        command: list[str],
        container: str | None,
        timeout_s: float,
    ) -> ExecResult:
        """Run ``command`` in a container over the exec WebSocket (v5/v4 channel protocol)."""
        path = (
            f"/api/v1/namespaces/{segment(namespace, 'namespace')}/pods/{segment(pod, 'name')}/exec"
        )
        parsed = self._about(path)
        params: list[tuple[str, str]] = [("command", c) for c in command]
        params += [("stdout", "true"), ("stderr", "true")]
        if container:
            params.append(("container", container))
        limit = self.settings.exec_output_max_bytes()
        out, err, status_raw = bytearray(), bytearray(), b""
        truncated = False
        read = 0
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session().ws_connect(
                    path.lstrip("/"),
                    params=params,
                    headers=caller_headers(token),
                    protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"),
                    max_msg_size=limit + 1,  # one frame larger than the bound: truncated too
                    # Leaving early (bound reached, timeout) closes at once: without this the
                    # close would read (and drop) whatever the command still prints for 10 s.
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0),
                ) as ws:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.ERROR:
                            if _frame_too_big(msg.data):
                                truncated = True
                                break
                            raise aiohttp.ClientError(str(msg.data))
                        if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                            continue
                        channel, payload = msg.data[0], msg.data[1:]
                        read += len(payload)
                        if channel in (1, 2):
                            room = limit - len(out) - len(err)
                            (out if channel == 1 else err).extend(payload[:room])
                            if len(payload) > room:
                                truncated = True
                                break
                        elif channel == 3:
                            status_raw += payload[:_ERROR_BODY_MAX]
        except TimeoutError:
            raise Unreachable(
                f"cluster {self.name!r}: exec in pod {namespace}/{pod} did not finish within "
                f"{timeout_s:g}s; run a shorter command"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise await self._error(
                token, "POST", path, parsed, exc.status, exc.message.encode()
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"cluster {self.name!r} at {self.cluster.server} is unreachable: "
                f"{_client_error_text(exc)}"
            ) from None
        finally:
            self.metrics.upstream_bytes.labels(self.name).inc(read)
        if truncated:
            return ExecResult(
                out.decode(errors="replace"), err.decode(errors="replace"), None, None, True, read
            )
        exit_code, error = _exec_status(status_raw)
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        return ExecResult(stdout, stderr, exit_code, error, False, read)


def _frame_too_big(error: Any) -> bool:
    """Whether a WebSocket ERROR message is aiohttp's refusal of a frame above max_msg_size."""
    return (
        isinstance(error, aiohttp.WebSocketError)
        and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    )


class ListStream:
    """The elements of one list answer as they arrive (see :meth:`KubeClient.stream_list`).

    :attr:`head` holds the answer's other members (``kind``, ``metadata`` with ``continue``,
    ``columnDefinitions``) once they have arrived (before the array, from the API server);
    :attr:`complete` says the whole body was read; :attr:`over_size` that reading stopped at
    ``max_response_bytes`` before the end."""

    def __init__(
        self,
        client: KubeClient,
        resp: aiohttp.ClientResponse,
        parsed: ApiPath | None,
        array_keys: Collection[str],
        decode: Callable[[bytes], Any],
    ) -> None:
        self._client = client
        self._resp = resp
        self._parsed = parsed
        self._decode = decode
        self._split = ArrayStream(array_keys, loads_json)
        self._limit = client.settings.max_response_bytes
        self.bytes_read = 0
        self.complete = False
        self.over_size = False

    @property
    def head(self) -> dict[str, Any]:
        return self._split.head

    @property
    def array_key(self) -> str | None:
        return self._split.array_key

    async def read(self) -> list[Any] | None:
        """The next elements (decoded, Secrets redacted); None at the end of the body, or once
        ``max_response_bytes`` were read (:attr:`over_size`)."""
        client = self._client
        while not self.complete and not self.over_size:
            chunk = await self._resp.content.read(READ_CHUNK)
            if not chunk:
                self._finish()
                return None
            self.bytes_read += len(chunk)
            client.metrics.upstream_bytes.labels(client.name).inc(len(chunk))
            if self.bytes_read > self._limit:
                self.over_size = True
                return None
            try:
                raws = self._split.feed(chunk)
            except ValueError:
                raise self._not_json() from None
            if raws:
                return [self._element(raw) for raw in raws]
        return None

    def _finish(self) -> None:
        try:
            self._split.finish()
        except ValueError:
            raise self._not_json() from None
        self.complete = True

    def _element(self, raw: bytes) -> Any:
        try:
            element = self._decode(raw)
        except ValueError:
            raise self._not_json() from None
        return self._client.access.filter_element(self._parsed, element)

    def _not_json(self) -> ClusterError:
        what = self._parsed.describe() if self._parsed else "a list"
        return ClusterError(
            f"cluster {self._client.name!r} answered GET {what} with content that is not a "
            "JSON list",
            status=self._resp.status,
        )


@dataclass(frozen=True)
class TextTail:
    """The end of a text body: ``skipped`` bytes before it were read and dropped (the text then
    starts at a line start)."""

    text: str
    skipped: int


async def _read_tail(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, int]:
    """The last ``limit`` bytes of a body of any length (from its first full line when some
    were dropped), holding at most twice that, and how many bytes were dropped."""
    kept = bytearray()
    skipped = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        kept += chunk
        if len(kept) > 2 * limit:
            skipped += len(kept) - limit
            del kept[: len(kept) - limit]
    if len(kept) > limit:
        skipped += len(kept) - limit
        del kept[: len(kept) - limit]
    if skipped:
        cut = kept.find(b"\n") + 1  # a partial first line: drop it (0 when there is no newline)
        skipped += cut
        del kept[:cut]
    return bytes(kept), skipped


# Every digit as "0", everything else as " ": a run of 19 digits then shows as b"0" * 19.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_NINETEEN_DIGITS = b"0" * 19


def loads_json(raw: bytes) -> Any:
    """Parse a response body exactly as ``json.loads`` does, with orjson where that is safe (a
    200-pod Table parses about twice as fast). The standard library decides whenever orjson refuses
    the text (NaN, Infinity, a BOM, lone surrogates, other encodings), and when a run of 19+
    digits could be an integer outside orjson's 64-bit range, which it would turn into a float
    (the scan costs about 1 ns per byte)."""
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def _check_path(path: str) -> None:
    """Refuse paths the HTTP layer would rewrite ('..', '.', query or fragment characters), so
    the access check always sees the path the API server will serve."""
    parts = path.split("/")
    if any(p in (".", "..") for p in parts) or any(c in path for c in "?#%\\"):
        raise InvalidArguments(f"invalid object name or namespace in request path {path!r}")


def _exec_status(raw: bytes) -> tuple[int | None, str | None]:
    if not raw:
        return None, None
    try:
        status = json.loads(raw)
    except ValueError:
        return None, raw.decode(errors="replace")
    if status.get("status") == "Success":
        return 0, None
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), None
            except ValueError:
                break
    message = str(status.get("message") or "exec failed")
    code = _EXIT_STATUS.search(message)  # runtimes without an ExitCode cause (kwok, some CRIs)
    if code:
        return int(code.group(1)), None
    return None, message


def _status_message(raw: bytes) -> tuple[str, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()[:500], ""
    if isinstance(body, dict):
        return str(body.get("message") or "").strip(), str(body.get("reason") or "")
    return "", ""


def _client_error_text(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the TLS certificate is not trusted (check ca_file / ca_data)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    return str(exc) or type(exc).__name__


def _short(path: str) -> str:
    return path if len(path) < 120 else path[:117] + "..."
