"""How many tool calls one user may have running at once (``max_concurrent_calls_per_user``).

Every other bound (output cap, list page size, bytes read per answer, exec output) limits one
call; this one limits how many of them one user runs side by side, so one user cannot take the
whole backend from the others.

Who "one user" is: the backend does not validate tokens (the API server does), so the key is
read from the token without trusting it. A JWT counts as its issuer and subject (``iss`` +
``sub`` of its payload): every token of the same person, however many they fetch, shares one
budget. Any other token (opaque, or a JWT without both claims) counts as itself. A caller can
forge a JWT with another ``sub`` to get a fresh budget, but the API server refuses that token at
the call's first request, so such calls end at once and cost next to nothing; the same holds for
forging someone else's ``sub`` to use up their budget. Keys are hashes: no token or claim is
kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Iterator

import orjson

from mcp_backend.errors import Busy

_MAX_PAYLOAD_CHARS = 16 * 1024  # a longer JWT payload is keyed as an opaque token


def caller_key(token: str) -> str:
    """A stable, non-reversible key of the user ``token`` belongs to (see the module text)."""
    claims = _jwt_claims(token)
    if claims is not None:
        iss, sub = claims.get("iss"), claims.get("sub")
        if isinstance(iss, str) and isinstance(sub, str) and sub:
            return "sub:" + hashlib.sha256(f"{iss}\0{sub}".encode()).hexdigest()[:32]
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _jwt_claims(token: str) -> dict[str, object] | None:
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > _MAX_PAYLOAD_CHARS:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


class CallLimiter:
    """Counts the running calls per user key; ``limit`` 0 means no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}

    def running(self, key: str) -> int:
        return self._running.get(key, 0)

    @contextlib.contextmanager
    def slot(self, token: str) -> Iterator[None]:
        """Hold one of the caller's call slots while the block runs; :class:`Busy` when all
        are taken (the call is refused, not queued: a queue would hold its memory too)."""
        if self.limit <= 0:
            yield
            return
        key = caller_key(token)
        running = self._running.get(key, 0)
        if running >= self.limit:
            raise Busy(
                f"too many tool calls at once: this user already has {running} running, the most "
                f"this server runs for one user (setting max_concurrent_calls_per_user). Wait for "
                "one to finish, then retry."
            )
        self._running[key] = running + 1
        try:
            yield
        finally:
            left = self._running[key] - 1
            if left:
                self._running[key] = left
            else:
                del self._running[key]
