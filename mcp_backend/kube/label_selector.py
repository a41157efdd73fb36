"""A ``LabelSelector`` object (a workload's ``spec.selector``) as the ``labelSelector`` query
parameter the API server reads (``app=web,tier in (a,b),!legacy``)."""

from __future__ import annotations

from typing import Any


def selector_query(selector: dict[str, Any]) -> str:
    """``matchLabels`` (sorted by key) then each ``matchExpressions`` entry, comma-joined."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
