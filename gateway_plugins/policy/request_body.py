"""Reading the JSON-RPC request body the ext_authz check may come with: pure functions, no I/O.

Its ``method`` and, for ``tools/call`` / ``prompts/get``, ``params.name`` must agree with the
``x-mcp-method`` / ``x-mcp-toolname`` / ``x-mcp-promptname`` headers (:func:`reconcile`,
:func:`reconcile_prompt`), so headers cannot describe a different request than the one sent; its
``params.arguments`` give the namespace rules their arguments (checked by
:func:`~.input.check_arguments`). A body that cannot be read is refused with a clear reason,
never skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway_plugins.policy.input import TOOL_NAME, InputError, check_arguments, safe_text


class HeaderMismatch(ValueError):
    """The x-mcp-* headers describe another request than the body; the message is safe to return."""


def arguments_from_body(body: bytes) -> dict[str, Any] | None:
    """``params.arguments`` of a JSON-RPC tools/call body, None when the body is absent.

    A body that is present but not a tools/call request is an error: the namespace rules must not
    be skipped because a body could not be read.
    """
    if not body.strip():
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than any real request
        raise InputError(
            "the request body is not valid JSON-RPC (cannot read the tool arguments)"
        ) from None
    if not isinstance(message, dict) or not isinstance(message.get("params"), dict):
        raise InputError("the request body is not a JSON-RPC request with params")
    arguments = message["params"].get("arguments", {})
    return check_arguments(arguments if arguments is not None else {})


@dataclass(frozen=True)
class RequestBody:
    """What the check reads from a JSON-RPC request body."""

    method: str | None  # None: a JSON-RPC message without a method (a response)
    tool: str | None  # params.name of a tools/call
    arguments: dict[str, Any] | None  # params.arguments of a tools/call (checked), else None
    prompt: str | None = None  # params.name of a prompts/get
    request_id: str | int | None = None  # the JSON-RPC id (None: absent, null or not an id)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InputError(
                f"the request body repeats the key {safe_text(key, 40)!r}: "
                "send each key once (parsers disagree on which copy counts)"
            )
        obj[key] = value
    return obj


def parse_request_body(body: bytes) -> RequestBody:
    """A JSON-RPC request body → its method, tool name and arguments; clear errors otherwise.

    Keys repeated in any object are refused: the gateway and the backend must not read two
    different requests out of one body.
    """
    try:
        message = json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeper than any real request
        if isinstance(exc, InputError):
            raise
        raise InputError(
            "the request body is not valid JSON-RPC (cannot read the method and tool arguments)"
        ) from None
    if not isinstance(message, dict):
        raise InputError(
            "the request body is not a single JSON-RPC message (a JSON object); "
            "batches are not supported by MCP 2025-06-18"
        )
    method = message.get("method")
    if method is not None and not isinstance(method, str):
        raise InputError("the method of the JSON-RPC body must be a string")
    request_id = _request_id(message.get("id"))
    if method not in ("tools/call", "prompts/get"):
        return RequestBody(method, None, None, request_id=request_id)
    params = message.get("params")
    if not isinstance(params, dict):
        raise InputError("the request body is not a JSON-RPC request with params")
    name = params.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        what = "tool" if method == "tools/call" else "prompt"
        raise InputError(
            f"params.name of the {method} body is not a valid MCP {what} name "
            "(1-128 characters of A-Z a-z 0-9 _ . -)"
        )
    if method == "prompts/get":
        return RequestBody(method, None, None, prompt=name, request_id=request_id)
    arguments = params.get("arguments", {})
    return RequestBody(
        method,
        name,
        check_arguments(arguments if arguments is not None else {}),
        request_id=request_id,
    )


def _request_id(value: Any) -> str | int | None:
    """A JSON-RPC id worth echoing in an error answer: a string or an integer."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        return value
    return None


def reconcile(header_method: str, header_tool: str, body: RequestBody) -> tuple[str, str]:
    """The method and tool to decide on when a body came with the headers.

    The headers must describe the body: a different ``x-mcp-method``, or for ``tools/call`` a
    different ``x-mcp-toolname``, raises :class:`HeaderMismatch`. A missing header takes the
    body's value.
    """
    body_method = body.method if body.method is not None else ""
    if header_method and header_method != body_method:
        what = (
            f"a {safe_text(body_method, 64)} request"
            if body_method
            else "a JSON-RPC message without a method"
        )
        raise HeaderMismatch(
            f"x-mcp-method says {safe_text(header_method, 64)} but the body is {what}; "
            "the x-mcp-* headers must describe the request body"
        )
    if body.tool is None:
        return body_method, header_tool
    if header_tool and header_tool != body.tool:
        raise HeaderMismatch(
            f"x-mcp-toolname says {safe_text(header_tool, 128)} but the body calls "
            f"{body.tool}; the x-mcp-* headers must describe the request body"
        )
    return body_method, body.tool


def reconcile_prompt(header_prompt: str, body: RequestBody) -> str:
    """The prompt to decide on for a ``prompts/get`` body: ``x-mcp-promptname`` must name the
    body's ``params.name`` (a missing header takes the body's value)."""
    if body.prompt is None:
        return header_prompt
    if header_prompt and header_prompt != body.prompt:
        raise HeaderMismatch(
            f"x-mcp-promptname says {safe_text(header_prompt, 128)} but the body gets prompt "
            f"{body.prompt}; the x-mcp-* headers must describe the request body"
        )
    return body.prompt
