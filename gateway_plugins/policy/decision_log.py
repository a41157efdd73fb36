"""The decision log: one JSON line per decision (who, server, tool, decision, reason).

Never the token: only the user's name and subject, and free text passes through the shared
redaction before it is written. Lines go to a file (appended, flushed per line) or to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from kmg_common.logging import redact, request_id_var


class DecisionLog:
    """Append-only JSON lines; ``path`` None or ``-`` writes to stderr; ``enabled`` False: off."""

    def __init__(self, path: Path | str | None = None, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._own = False
        self._stream: IO[str] | None = None
        if not enabled:
            return
        if path is None or str(path) == "-":
            self._stream = sys.stderr
        else:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._stream = target.open("a", encoding="utf-8", buffering=1)
            self._own = True

    def record(
        self,
        *,
        user: str,
        subject: str | None,
        method: str,
        server: str | None,
        tool: str | None,
        allow: bool,
        reason: str,
        engine: str,
        status: int,
        duration_ms: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if self._stream is None:
            return
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "type": "decision",
            "request_id": request_id_var.get(),
            "user": user,
            "sub": subject,
            "method": method,
            "server": server,
            "tool": tool,
            "decision": "allow" if allow else "deny",
            "reason": redact(reason),
            "engine": engine,
            "status": status,
            "duration_ms": round(duration_ms, 3),
        }
        if extra:
            entry.update(extra)
        self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._own and self._stream is not None:
            self._stream.close()
        self._stream = None
