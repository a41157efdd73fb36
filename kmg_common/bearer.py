"""Bearer tokens out of an ``Authorization`` header value: one parser for the three services."""

from __future__ import annotations


def bearer_token(header: str | None) -> str | None:
    """The token of ``Bearer <token>``, else None (the caller then answers 401, fail closed).

    The scheme is matched case-insensitively and separated from the token by spaces; the token is
    stripped. None for a missing or empty header, another scheme (``Basic``), an empty or blank
    token, and a value holding more than one token (whitespace inside it), so a header such as
    ``Bearer a b`` or ``Bearer a,Bearer b`` never passes as one token.
    """
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    token = rest.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if any(char.isspace() or char == "," for char in token):
        return None
    return token
