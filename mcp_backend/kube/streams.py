"""Answers read piece by piece: the elements of a list as they arrive (:class:`ListStream`),
and the end of a text body of any length read in bounded memory (:class:`TextTail`)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from mcp_backend.access.policy import ApiPath
from mcp_backend.errors import ClusterError
from mcp_backend.kube.json_body import loads_json
from mcp_backend.kube.json_stream import ArrayStream

if TYPE_CHECKING:
    from mcp_backend.kube.client import KubeClient

READ_CHUNK = 64 * 1024


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


async def read_tail(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, int]:
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
