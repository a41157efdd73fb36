"""Errors a tool reports to the agent. Each message says what went wrong and what to do next.

Tool handlers raise these; the server turns them into ``isError`` tool results. Anything else is
an internal fault: logged with its stack trace server side, reported to the client as one line.
"""

from __future__ import annotations

from typing import Any


class ToolFailure(Exception):
    """A failure to show the agent as-is (no stack trace, never a token)."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidArguments(ToolFailure):
    """The tool arguments are missing, of the wrong type, or inconsistent."""


class AccessDenied(ToolFailure):
    """The backend's own access policy (denied kinds, read-only) refuses the call."""


class ClusterError(ToolFailure):
    """An API server call failed; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.reason = reason


class Unauthorized(ClusterError):
    """401: the API server did not accept the token."""


class Forbidden(ClusterError):
    """403: RBAC refused the verb on the resource."""


class NotFound(ClusterError):
    """404: no such object, or an API the cluster does not serve."""


class Unreachable(ClusterError):
    """No answer: connection refused, DNS, TLS, or timeout."""


class TooLarge(ToolFailure):
    """An answer (API server body, helm output) passed the bound of what one call may read."""


class Busy(ToolFailure):
    """The caller already has as many calls running as one user may (per-user concurrency)."""


class UnknownKind(ToolFailure):
    """The apiVersion/kind is not served by the cluster; the message lists near matches."""
