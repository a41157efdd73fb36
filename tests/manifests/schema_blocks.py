"""Building blocks of the Helm chart's values schema (JSON Schema 2020-12): objects that refuse
keys they do not list, described leaves, Kubernetes names, label maps and resource quantities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def obj(description: str, properties: Mapping[str, Schema], **extra: Any) -> Schema:
    """An object that refuses keys it does not list."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": dict(properties),
        **extra,
    }


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def integer(description: str, minimum: int = 0, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, "minimum": minimum, **extra}


def name(description: str, pattern: str = DNS_LABEL, max_length: int = 63) -> Schema:
    return string(description, pattern=pattern, minLength=1, maxLength=max_length)


def string_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def label_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "minProperties": 1,
        "patternProperties": {LABEL_KEY: {"type": "string", "maxLength": 63}},
        "additionalProperties": False,
    }


# (patternProperties, not propertyNames: helm's validator reports a propertyNames failure at the
# wrong path, patternProperties + additionalProperties names the key and where it is)
QUANTITIES: Schema = {
    "type": "object",
    "patternProperties": {
        LABEL_KEY: {
            "type": ["string", "number"],
            "pattern": r"^[0-9.]+([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$",
        }
    },
    "additionalProperties": False,
}


def resources(description: str) -> Schema:
    return obj(
        description,
        {"requests": QUANTITIES, "limits": QUANTITIES},
    )
