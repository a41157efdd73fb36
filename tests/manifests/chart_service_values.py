"""The values schema of each of the three services in the Helm chart: image, replicas,
autoscaling, disruption budget, placement, extra Host names, and its ``config`` checked against
the JSON schema of the service's real settings model (``extra="forbid"`` there becomes
``additionalProperties: false``), plus what only that service has (the token exchange's shared
cache, the policy's OPA sidecar and data).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from pydantic import BaseModel

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from mcp_backend.config import Settings as BackendSettings
from tests.manifests.schema_blocks import (
    DNS_SUBDOMAIN,
    Schema,
    boolean,
    integer,
    name,
    obj,
    resources,
    string,
    string_map,
)


def image_override(service: str) -> Schema:
    return obj(
        f"This service's image; empty: image.repositoryPrefix/{service}:image.tag.",
        {
            "repository": string("Repository; empty: <image.repositoryPrefix>/" + service + "."),
            "tag": string("Tag; empty: image.tag."),
        },
    )


def model_schema(model: type[BaseModel], prefix: str) -> tuple[Schema, dict[str, Schema]]:
    """The settings model's JSON schema, its ``$defs`` renamed ``<prefix>.<name>`` so the three
    services' definitions live side by side in the chart schema's ``$defs``."""
    raw = json.dumps(model.model_json_schema(mode="validation"))
    raw = re.sub(r'"#/\$defs/([^"]+)"', lambda m: f'"#/$defs/{prefix}.{m.group(1)}"', raw)
    schema: Schema = json.loads(raw)
    defs = {f"{prefix}.{k}": v for k, v in schema.pop("$defs", {}).items()}
    schema.pop("title", None)
    # the chart sets these itself (listen address, mounts); the values need not carry them
    schema.pop("required", None)
    return schema, defs


def service(
    key: str, svc: str, description: str, model: type[BaseModel], extra: Mapping[str, Schema]
) -> tuple[Schema, dict[str, Schema]]:
    config, defs = model_schema(model, key)
    config["description"] = (
        f"{svc} settings (README, Configuration); the chart sets the listen address, Host names, "
        "mounted files and the public URL over them."
    )
    props: dict[str, Schema] = {
        "image": image_override(svc),
        "replicas": integer("Replicas when autoscaling is off.", 1),
        "autoscaling": obj(
            "HorizontalPodAutoscaler on this service's container CPU; on: the Deployment sets "
            "no replicas (the HPA owns the count).",
            {
                "enabled": boolean("Create the HPA."),
                "minReplicas": integer("Fewest replicas.", 1),
                "maxReplicas": integer("Most replicas.", 1),
                "targetCPUUtilizationPercentage": integer("Target CPU utilization.", 1),
                "scaleDownStabilizationSeconds": integer(
                    "Scale-down stabilization window.", 0, maximum=3600
                ),
            },
        ),
        "podDisruptionBudget": obj(
            "PodDisruptionBudget for voluntary disruptions.",
            {
                "enabled": boolean("Create the PDB."),
                "maxUnavailable": {
                    "description": "Pods down at a time (a number or a percentage).",
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^[0-9]{1,3}%$"},
                    ],
                },
            },
        ),
        "topologySpread": boolean("Spread replicas over nodes (required) and zones (preferred)."),
        "terminationGracePeriodSeconds": integer("Grace period of a stopping pod.", 1),
        "preStopSleepSeconds": integer(
            "preStop sleep while the endpoints are removed (0: none).", 0
        ),
        "resources": resources("The service container's requests and limits."),
        "podAnnotations": string_map("Extra pod annotations."),
        "nodeSelector": string_map("Pod nodeSelector."),
        "tolerations": {
            "type": "array",
            "description": "Pod tolerations.",
            "items": {"type": "object"},
        },
        "affinity": {"type": "object", "description": "Pod affinity."},
        "extraAllowedHosts": {
            "type": "array",
            "description": "Host values accepted besides the Service names (and the route "
            "hostname for the backend); 'name' or 'name:*'.",
            "items": {"type": "string", "minLength": 1},
        },
        **extra,
        "config": config,
    }
    return obj(description, props), defs


def services() -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The three services' values by their key in ``values.yaml``, and their settings models'
    definitions (the chart schema's ``$defs``)."""
    defs: dict[str, Schema] = {}
    backend, d = service("mcpBackend", "mcp-backend", "The MCP backend.", BackendSettings, {})
    defs |= d
    exchange, d = service(
        "tokenExchange",
        "token-exchange",
        "The token-exchange plugin.",
        TokenExchangeSettings,
        {
            "sharedCache": obj(
                "Replicas share exchanged tokens through Redis (cache.backend: redis).",
                {
                    "enabled": boolean("Use the shared cache."),
                    "redisUrl": string(
                        "redis:// or rediss:// URL without credentials; empty: the chart's "
                        "Redis (redis.enabled).",
                        pattern=r"^$|^rediss?://[^@\s]+$",
                    ),
                    "passwordSecret": name("Secret with key 'password'.", DNS_SUBDOMAIN, 253),
                    "encryptionKeysSecret": name(
                        "Secret with key 'keys' (one per line, newest first).", DNS_SUBDOMAIN, 253
                    ),
                },
            )
        },
    )
    defs |= d
    policy, d = service(
        "policy",
        "policy",
        "The policy plugin.",
        PolicySettings,
        {
            "opa": obj(
                "The OPA sidecar; off: the embedded engine.",
                {
                    "enabled": boolean("Run OPA beside the service (decisions on loopback)."),
                    "image": string("OPA image.", minLength=1),
                    "resources": resources("The OPA container's requests and limits."),
                },
            ),
            "data": {
                "type": "object",
                "description": "The policy data: one JSON document per file of ConfigMap "
                "policy-data (default: policies/data/). Watched, reloaded without restarts.",
                "patternProperties": {r"^[A-Za-z0-9_-]+\.json$": {"type": "object"}},
                "additionalProperties": False,
            },
        },
    )
    defs |= d
    return {"mcpBackend": backend, "tokenExchange": exchange, "policy": policy}, defs
